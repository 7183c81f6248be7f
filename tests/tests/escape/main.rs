//! Escape battery, run under every enforcement (`Enforcement`): `bpf` and
//! `seccomp` as root, and `seccomp` as an unprivileged user. Every network
//! vector must reach the server outside the sandbox and be denied
//! (EPERM/EACCES, nothing on the wire) inside it (rerouting vectors:
//! nothing on the wire, whatever the probe saw); process-level escapes must
//! not lift the confinement; a sockaddr flipped under a connect, i386
//! system calls, io_uring, heavy signals and parallel connects must not
//! open a hole or break legitimate traffic; loopback, connected and
//! unconnected UDP with ancillary data, fd passing and the proxy endpoint
//! (UDP, bulk TCP) must keep working.
//!
//! Tests are grouped by enforcement: `bpf::`, `seccomp::`, `seccomp_user::`
//! (process and behaviour tests) and `net_bpf::`, `net_seccomp::`,
//! `net_seccomp_user::` (one test per network vector; `net_bpf_transparent::`
//! runs them under `--enforcer bpf --transparent`, issue 14), so
//! `cargo test -p nono-tests --test escape seccomp_user::` runs everything
//! for one enforcement.
//!
//! Needs root and a real kernel. Run with `cargo test -p nono-tests --test escape`.
//!
//! The checks live in `process` (process vectors), `keep_working` (what
//! must keep working) and `pressure` (enforcement under pressure); every
//! test is declared here, per enforcement, so test names do not depend on
//! that split.

mod keep_working;
mod pressure;
mod process;

use nono_tests::per_enforcement;
use nono_tests::runner::{Enforcement, ExecOpts, Harness, RunAs};
use nono_tests::sys;
use nono_tests::vectors::{self, NETWORK_VECTORS, PROCESS_VECTORS};

use keep_working::{
    connected_udp_with_ancillary_data_reaches_loopback, fd_passing_over_unix_socketpair_works,
    loopback_allowed_but_not_127_0_0_2, proxy_endpoint_allowed_exactly,
    tcp_bulk_to_proxy_endpoint_both_ways, udp_send_to_proxy_endpoint_arrives,
    unconnected_udp_with_ancillary_data_reaches_loopback,
};
use pressure::{
    heavy_signals_do_not_break_or_open_connections, io_uring_is_refused_at_setup,
    parallel_loopback_connects_all_succeed, sockaddr_flipped_during_connect_never_leaks,
};
use process::{
    process_daemonize, process_detach_bpf, process_kill_agent_from_inside, process_parent_cgroup,
    process_proc_root_cgroup, process_steal_fds_bpf_links, process_steal_fds_cgroup_dir,
    process_steal_fds_seccomp_listener, process_sub_cgroup,
};

const PROBE: &str = env!("CARGO_BIN_EXE_nono-probe");

/// One module per enforcement, each with one test per network vector.
macro_rules! network_vector_tests {
    ($($test:ident => $vector:literal),* $(,)?) => {
        network_vector_tests!(@module net_bpf, Enforcement::Bpf, $($test => $vector),*);
        network_vector_tests!(@module net_seccomp, Enforcement::Seccomp, $($test => $vector),*);
        network_vector_tests!(
            @module net_seccomp_user, Enforcement::SeccompUser, $($test => $vector),*
        );
        network_vector_tests!(
            @module net_bpf_transparent, Enforcement::BpfTransparent, $($test => $vector),*
        );
        /// Every vector in the table has a test above (and vice versa).
        #[test]
        fn network_vector_table_is_fully_covered() {
            let mut tested = vec![$($vector),*];
            let mut table: Vec<&str> = NETWORK_VECTORS.iter().map(|v| v.name).collect();
            tested.sort();
            table.sort();
            assert_eq!(tested, table, "escape.rs tests and vectors::NETWORK_VECTORS differ");
        }
    };
    (@module $module:ident, $e:expr, $($test:ident => $vector:literal),*) => {
        mod $module {
            use super::*;
            $(
                #[test]
                fn $test() {
                    vectors::check_network_vector($e, PROBE, $vector);
                }
            )*
        }
    };
}

nono_tests::with_network_vectors!(network_vector_tests);

per_enforcement!(
    bpf,
    super::Enforcement::Bpf,
    [
        process_daemonize,
        process_kill_agent_from_inside,
        process_steal_fds_bpf_links,
        process_steal_fds_cgroup_dir,
        process_steal_fds_seccomp_listener,
        process_sub_cgroup,
        process_parent_cgroup,
        process_detach_bpf,
        process_proc_root_cgroup,
        connected_udp_with_ancillary_data_reaches_loopback,
        unconnected_udp_with_ancillary_data_reaches_loopback,
        udp_send_to_proxy_endpoint_arrives,
        tcp_bulk_to_proxy_endpoint_both_ways,
        loopback_allowed_but_not_127_0_0_2,
        proxy_endpoint_allowed_exactly,
        fd_passing_over_unix_socketpair_works,
        io_uring_is_refused_at_setup,
        sockaddr_flipped_during_connect_never_leaks,
        parallel_loopback_connects_all_succeed,
        heavy_signals_do_not_break_or_open_connections,
    ]
);

per_enforcement!(
    seccomp,
    super::Enforcement::Seccomp,
    [
        process_daemonize,
        process_kill_agent_from_inside,
        process_steal_fds_bpf_links,
        process_steal_fds_cgroup_dir,
        process_steal_fds_seccomp_listener,
        process_sub_cgroup,
        process_parent_cgroup,
        process_detach_bpf,
        process_proc_root_cgroup,
        connected_udp_with_ancillary_data_reaches_loopback,
        unconnected_udp_with_ancillary_data_reaches_loopback,
        udp_send_to_proxy_endpoint_arrives,
        tcp_bulk_to_proxy_endpoint_both_ways,
        loopback_allowed_but_not_127_0_0_2,
        proxy_endpoint_allowed_exactly,
        fd_passing_over_unix_socketpair_works,
        io_uring_is_refused_at_setup,
        sockaddr_flipped_during_connect_never_leaks,
        parallel_loopback_connects_all_succeed,
        heavy_signals_do_not_break_or_open_connections,
    ]
);

// The cgroup vectors (sub-cgroup, parent-cgroup, detach-bpf,
// proc-root-cgroup) need a privileged agent's cgroup and namespaces.
per_enforcement!(
    seccomp_user,
    super::Enforcement::SeccompUser,
    [
        process_daemonize,
        process_kill_agent_from_inside,
        process_steal_fds_bpf_links,
        process_steal_fds_cgroup_dir,
        process_steal_fds_seccomp_listener,
        connected_udp_with_ancillary_data_reaches_loopback,
        unconnected_udp_with_ancillary_data_reaches_loopback,
        udp_send_to_proxy_endpoint_arrives,
        tcp_bulk_to_proxy_endpoint_both_ways,
        loopback_allowed_but_not_127_0_0_2,
        proxy_endpoint_allowed_exactly,
        fd_passing_over_unix_socketpair_works,
        io_uring_is_refused_at_setup,
        sockaddr_flipped_during_connect_never_leaks,
        parallel_loopback_connects_all_succeed,
        heavy_signals_do_not_break_or_open_connections,
    ]
);

/// `--enforcer auto` as root picks bpf (and says so on stderr); spot-check
/// two vectors.
#[test]
fn auto_enforcer_as_root_is_bpf() {
    let h = Harness::new(PROBE);
    for name in ["tcp4", "udp-sendto"] {
        let v = vectors::find(name);
        vectors::assert_reachable_outside(&h, v);
        let opts = ExecOpts {
            enforcer: Some("auto".into()),
            in_client_netns: true,
            ..Default::default()
        };
        vectors::assert_blocked_inside_with(&h, opts, Some(Enforcement::Bpf), v);
    }
    let out = h.agent_exec(
        &ExecOpts {
            enforcer: Some("auto".into()),
            ..Default::default()
        },
        &["true"],
    );
    assert!(
        out.status.success() && out.stderr.contains("nono-agent: enforcer: bpf"),
        "auto as root should print `nono-agent: enforcer: bpf`: {}",
        out.describe()
    );
}

/// `--enforcer auto` without privileges picks seccomp (and says so on
/// stderr); spot-check two vectors.
#[test]
fn auto_enforcer_unprivileged_is_seccomp() {
    let h = Harness::new(PROBE);
    for name in ["tcp4", "udp-sendto"] {
        let v = vectors::find(name);
        vectors::assert_reachable_outside(&h, v);
        let opts = ExecOpts {
            enforcer: Some("auto".into()),
            in_client_netns: true,
            user: Some(RunAs::fresh()),
            ..Default::default()
        };
        vectors::assert_blocked_inside_with(&h, opts, Some(Enforcement::SeccompUser), v);
    }
    let out = h.agent_exec(
        &ExecOpts {
            enforcer: Some("auto".into()),
            user: Some(RunAs::fresh()),
            ..Default::default()
        },
        &["true"],
    );
    assert!(
        out.status.success() && out.stderr.contains("nono-agent: enforcer: seccomp"),
        "auto without privileges should print `nono-agent: enforcer: seccomp`: {}",
        out.describe()
    );
}

/// `--enforcer bpf` without privileges refuses to run the command (125).
#[test]
fn bpf_enforcer_unprivileged_refuses_to_run() {
    let h = Harness::new(PROBE);
    let tmp = sys::TempDir::new("bpf-unpriv");
    let user = RunAs::fresh();
    tmp.chown(user.uid, user.gid);
    let ran = tmp.path("ran");
    let out = h.agent_exec(
        &ExecOpts {
            enforcer: Some("bpf".into()),
            user: Some(user),
            ..Default::default()
        },
        &["touch", ran.to_str().unwrap()],
    );
    assert_eq!(
        out.code(),
        125,
        "--enforcer bpf without privileges must fail closed (125)\n{}",
        out.describe()
    );
    assert!(
        !ran.exists(),
        "the command ran although no enforcer applied"
    );
}

#[test]
fn process_vector_list_is_covered() {
    // All below; kill-agent from outside (the test kills the agent, then
    // `nono-agent cleanup`): tests/serial.rs.
    assert_eq!(
        PROCESS_VECTORS,
        &[
            "daemonize",
            "sub-cgroup",
            "parent-cgroup",
            "detach-bpf",
            "kill-agent",
            "proc-root-cgroup",
            "steal-fds",
        ]
    );
}
