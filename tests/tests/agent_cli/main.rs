//! `nono-agent exec` behaviour under every enforcement (`bpf` and `seccomp`
//! as root, `seccomp` unprivileged): exit codes, events file, summary line,
//! confinement of the child (caps, no_new_privs, seccomp, pid/cgroup
//! namespaces, cgroup), concurrency.
//!
//! Tests are grouped by enforcement (`bpf::`, `seccomp::`, `seccomp_user::`).
//! Needs root and a real kernel. Run with `cargo test -p nono-tests --test agent_cli`.
//!
//! The checks live in `confinement` (exit codes, the child's confinement),
//! `events` (events, the summary, concurrency) and `rough` (the rough
//! edges of issue 13: usage errors, --user, hidden commands, --events,
//! doctor vs exec, validate); every test is declared here, so test names
//! do not depend on that split.

mod confinement;
mod events;
mod rough;

use nono_tests::per_enforcement;
use nono_tests::runner::{exec_command, Enforcement, ExecOpts};
use nono_tests::sys::{self, CmdOutput};

use confinement::{
    child_environment_and_namespaces, child_has_no_capabilities_no_new_privs_and_a_filter,
    exit_code_for_signal_is_128_plus_n, exit_code_is_propagated, exit_code_missing_command_is_127,
    exit_code_not_executable_is_126, signals_reach_the_command_while_the_terminal_is_full,
    signals_to_the_agent_reach_the_command,
};
use events::{
    concurrent_sandboxes_have_separate_policies, events_file_has_well_formed_denials,
    summary_line_counts_denials,
};

/// The rough edges (issue 13, item 5): not per enforcement.
mod rough_edges {
    macro_rules! tests {
        ($($f:ident),* $(,)?) => {
            $(
                #[test]
                fn $f() {
                    super::rough::$f();
                }
            )*
        };
    }
    tests!(
        usage_errors_exit_125_and_exec_without_dashes_gets_a_hint,
        values_a_profile_refuses_are_refused_on_the_command_line,
        user_gets_its_own_identity_and_a_bare_uid_runs,
        user_runs_protect_that_users_auto_run_files,
        a_profile_that_hides_the_command_or_its_interpreter_says_so,
        the_hidden_command_check_runs_with_the_target_users_rights,
        events_never_share_the_commands_output,
        doctor_predicts_exec_inside_ip_netns_exec,
        quiet_hides_the_seccomp_fallback_line,
        profile_validate_agrees_with_exec,
        every_variable_the_command_sees_is_documented,
        the_license_file_is_there,
    );
}

const PROBE: &str = env!("CARGO_BIN_EXE_nono-probe");

per_enforcement!(
    bpf,
    super::Enforcement::Bpf,
    [
        exit_code_is_propagated,
        exit_code_for_signal_is_128_plus_n,
        signals_to_the_agent_reach_the_command,
        signals_reach_the_command_while_the_terminal_is_full,
        exit_code_missing_command_is_127,
        exit_code_not_executable_is_126,
        child_has_no_capabilities_no_new_privs_and_a_filter,
        child_environment_and_namespaces,
        events_file_has_well_formed_denials,
        summary_line_counts_denials,
        concurrent_sandboxes_have_separate_policies,
    ]
);

per_enforcement!(
    seccomp,
    super::Enforcement::Seccomp,
    [
        exit_code_is_propagated,
        exit_code_for_signal_is_128_plus_n,
        signals_to_the_agent_reach_the_command,
        signals_reach_the_command_while_the_terminal_is_full,
        exit_code_missing_command_is_127,
        exit_code_not_executable_is_126,
        child_has_no_capabilities_no_new_privs_and_a_filter,
        child_environment_and_namespaces,
        events_file_has_well_formed_denials,
        summary_line_counts_denials,
        concurrent_sandboxes_have_separate_policies,
    ]
);

per_enforcement!(
    seccomp_user,
    super::Enforcement::SeccompUser,
    [
        exit_code_is_propagated,
        exit_code_for_signal_is_128_plus_n,
        signals_to_the_agent_reach_the_command,
        exit_code_missing_command_is_127,
        exit_code_not_executable_is_126,
        child_has_no_capabilities_no_new_privs_and_a_filter,
        child_environment_and_namespaces,
        events_file_has_well_formed_denials,
        summary_line_counts_denials,
        concurrent_sandboxes_have_separate_policies,
    ]
);

/// Runs `nono-agent exec` in the test's netns (commands that send no
/// traffic) under `e`.
fn agent_run(e: Enforcement, argv: &[&str]) -> CmdOutput {
    sys::require_prereqs();
    let opts = ExecOpts {
        in_client_netns: false,
        ..ExecOpts::for_enforcement(e)
    };
    let mut cmd = exec_command(&sys::agent_bin(), None, &opts);
    cmd.args(argv);
    sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT)
}
