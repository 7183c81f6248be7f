//! Sandboxes made by `nono-agent daemon` for unprivileged clients.
//!
//! * `net_daemon_user::` — the whole network escape battery (every vector
//!   of `vectors::NETWORK_VECTORS`) through the daemon: each must reach the
//!   server outside and be denied inside, with 0 packets at the
//!   receiver-side oracle; every sandboxed run asserts the
//!   `nono-agent: enforcer: bpf (daemon)` line.
//! * `daemon_user::` — the process vectors, what must keep working
//!   (loopback, proxy endpoint) and enforcement under pressure (the escape
//!   target's checks, shared with it).
//! * `lifecycle` — a SIGKILLed client leaves nothing; 200 sandboxes from 4
//!   users at once.
//!
//! The battery shares one daemon per test binary
//! (`nono_tests::daemon::Daemon::shared`, removed at exit); the lifecycle
//! tests have their own. Needs root and a real kernel.

#[path = "../escape/keep_working.rs"]
mod keep_working;
mod lifecycle;
#[path = "../escape/pressure.rs"]
mod pressure;
#[path = "../escape/process.rs"]
mod process;
mod transparent;

use nono_tests::per_enforcement;
use nono_tests::runner::Enforcement;
use nono_tests::vectors::{self, NETWORK_VECTORS};

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

macro_rules! network_vector_tests {
    ($($test:ident => $vector:literal),* $(,)?) => {
        mod net_daemon_user {
            use super::*;
            $(
                #[test]
                fn $test() {
                    vectors::check_network_vector(Enforcement::DaemonUser, PROBE, $vector);
                }
            )*
        }
        /// Every vector in the table has a test above (and vice versa).
        #[test]
        fn network_vector_table_is_fully_covered() {
            let mut tested = vec![$($vector),*];
            let mut table: Vec<&str> = NETWORK_VECTORS.iter().map(|v| v.name).collect();
            tested.sort();
            table.sort();
            assert_eq!(tested, table, "daemon tests and vectors::NETWORK_VECTORS differ");
        }
    };
}

nono_tests::with_network_vectors!(network_vector_tests);

per_enforcement!(
    daemon_user,
    super::Enforcement::DaemonUser,
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
