//! Host protection battery (issue 9, first part): whatever the enforcer and
//! privilege, a sandbox cannot act on the host outside its own process tree
//! through the kernel's tunables, system files, other processes of the same
//! user, or the caller's terminal.
//!
//! Every vector is first shown to work outside a sandbox (writing a
//! tunable's current value back, a scratch file, a helper process of the
//! same uid, a real pseudo-terminal), then refused inside, with the host
//! side as the oracle (file contents, the terminal's input queue). The
//! over-blocking checks run in the same sandboxes: the working directory and
//! temp dir stay writable, system files readable.
//!
//! Tests are grouped by enforcement (`bpf::`, `seccomp::`, `seccomp_user::`).
//! Needs root and a real kernel. Run with `cargo test -p nono-tests --test host`.
//!
//! The checks live in `files` (tunables and system files), `paths`
//! (autorun files, protected directories, the events file, command servers,
//! ordinary files), `processes` (other processes, the terminal) and
//! `terminal` (the pseudo-terminal relay, driven through tmux); every
//! test is declared here, so test names do not depend on that split.

mod files;
mod paths;
mod pidns;
mod processes;
mod terminal;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use nono_tests::per_enforcement;
use nono_tests::runner::{exec_command, Enforcement, ExecOpts, RunAs};
use nono_tests::sys::{self, CmdOutput, TempDir};

use files::tunables_and_system_files_are_read_only;
use paths::{
    a_server_leaving_during_start_up_is_no_error, autorun_files_are_read_only,
    command_servers_are_out_of_reach, events_file_cannot_be_forged, ordinary_files_stay_writable,
    protected_directories_cannot_be_moved_away,
};
use pidns::{other_processes_are_invisible, process_work_still_works};
use processes::{other_processes_are_out_of_reach, terminal_injection_is_refused};
use terminal::{
    ctrl_z_stops_the_whole_job_and_fg_continues_it, shell_on_the_relay_behaves_like_a_terminal,
};

const PYTHON: &str = "/usr/bin/python3";

per_enforcement!(
    bpf,
    super::Enforcement::Bpf,
    [
        command_servers_are_out_of_reach,
        events_file_cannot_be_forged,
        tunables_and_system_files_are_read_only,
        autorun_files_are_read_only,
        protected_directories_cannot_be_moved_away,
        terminal_injection_is_refused,
        shell_on_the_relay_behaves_like_a_terminal,
        ctrl_z_stops_the_whole_job_and_fg_continues_it,
        other_processes_are_out_of_reach,
        other_processes_are_invisible,
        process_work_still_works,
        ordinary_files_stay_writable,
        a_server_leaving_during_start_up_is_no_error,
    ]
);
per_enforcement!(
    seccomp,
    super::Enforcement::Seccomp,
    [
        command_servers_are_out_of_reach,
        events_file_cannot_be_forged,
        tunables_and_system_files_are_read_only,
        autorun_files_are_read_only,
        protected_directories_cannot_be_moved_away,
        terminal_injection_is_refused,
        shell_on_the_relay_behaves_like_a_terminal,
        ctrl_z_stops_the_whole_job_and_fg_continues_it,
        other_processes_are_out_of_reach,
        other_processes_are_invisible,
        process_work_still_works,
        ordinary_files_stay_writable,
        a_server_leaving_during_start_up_is_no_error,
    ]
);
per_enforcement!(
    seccomp_user,
    super::Enforcement::SeccompUser,
    [
        command_servers_are_out_of_reach,
        events_file_cannot_be_forged,
        autorun_files_are_read_only,
        protected_directories_cannot_be_moved_away,
        terminal_injection_is_refused,
        shell_on_the_relay_behaves_like_a_terminal,
        ctrl_z_stops_the_whole_job_and_fg_continues_it,
        other_processes_are_out_of_reach,
        other_processes_are_invisible,
        process_work_still_works,
        ordinary_files_stay_writable,
        a_server_leaving_during_start_up_is_no_error,
    ]
);

fn opts(e: Enforcement) -> ExecOpts {
    ExecOpts {
        enforcer: Some(e.flag().to_string()),
        user: (!e.privileged()).then(RunAs::fresh),
        ..Default::default()
    }
}

/// Runs `python3 -c code args...` in a sandbox under `o`.
fn sandboxed(o: &ExecOpts, code: &str, args: &[&str]) -> CmdOutput {
    sys::require_prereqs();
    let mut cmd = exec_command(&sys::agent_bin(), None, o);
    cmd.args([PYTHON, "-c", code]).args(args);
    sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT)
}

/// Runs `python3 -c code args...` outside any sandbox, as `user` if given.
fn outside(user: Option<RunAs>, code: &str, args: &[&str]) -> CmdOutput {
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new(sys::require_tool("setpriv", "runs helpers unprivileged"));
            c.args(u.setpriv_args()).arg(PYTHON);
            c
        }
        None => Command::new(PYTHON),
    };
    cmd.args(["-c", code]).args(args);
    sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT)
}

#[test]
fn host_mounts_are_unchanged_by_a_sandbox() {
    sys::require_prereqs();
    let before = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let out = sandboxed(&opts(Enforcement::Bpf), "print('hi')", &[]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    std::thread::sleep(Duration::from_millis(50));
    let after = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(
        before.lines().count(),
        after.lines().count(),
        "mounts leaked to the host"
    );
}

/// A root-only datagram socket, reached by the root seccomp supervisor on
/// behalf of a `--user nobody` sandbox that made a user namespace of its own
/// (where it shows every capability): still refused, nothing delivered.
#[test]
fn supervisor_lends_no_capabilities_to_a_nested_user_namespace() {
    use std::os::unix::net::UnixDatagram;
    sys::require_prereqs();
    let dir = TempDir::new("host-rootonly");
    fs::set_permissions(dir.path(""), fs::Permissions::from_mode(0o700)).unwrap();
    let sock = dir.path("sock");
    let rx = UnixDatagram::bind(&sock).unwrap();
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600)).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let code = r#"
import socket, ctypes, sys, errno
libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[2] == "unshare" and libc.unshare(0x10000000) != 0:
    print("unshare failed"); sys.exit(1)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    s.sendto(b"from-sandbox", sys.argv[1]); print("send ok")
except OSError as e:
    print("send", errno.errorcode.get(e.errno, e.errno))
"#;
    // Outside, root reaches it (the oracle works).
    let out = outside(None, code, &[sock.to_str().unwrap(), "plain"]);
    assert_eq!(out.stdout.trim(), "send ok", "{}", out.describe());
    let mut buf = [0u8; 64];
    assert_eq!(rx.recv(&mut buf).unwrap(), 12);
    for how in ["plain", "unshare"] {
        let mut cmd = exec_command(
            &sys::agent_bin(),
            None,
            &ExecOpts {
                enforcer: Some("seccomp".into()),
                ..Default::default()
            },
        );
        // `--user` goes before `--`: rebuild the tail.
        let mut argv: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let dashdash = argv.iter().position(|a| a == "--").unwrap();
        argv.splice(
            dashdash..dashdash,
            ["--user".to_string(), "nobody".to_string()],
        );
        let mut c = Command::new(cmd.get_program());
        c.args(&argv)
            .args([PYTHON, "-c", code, sock.to_str().unwrap(), how]);
        cmd = c;
        let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
        assert_eq!(
            out.stdout.trim(),
            "send EACCES",
            "{how}: {}",
            out.describe()
        );
        assert!(
            rx.recv(&mut buf).is_err(),
            "{how}: the root-only socket received the sandbox's message"
        );
    }
}
