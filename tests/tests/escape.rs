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
//! `net_seccomp_user::` (one test per network vector), so
//! `cargo test -p nono-tests --test escape seccomp_user::` runs everything
//! for one enforcement.
//!
//! Needs root and a real kernel. Run with `cargo test -p nono-tests --test escape`.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nono_tests::netns::{PROXY_V4, SERVER_V4};
use nono_tests::oracle::{AcceptCounter, Frame, Proto, TcpCounter, TcpEcho, UdpReceiver};
use nono_tests::per_enforcement;
use nono_tests::runner::{Enforcement, ExecOpts, Harness, ProbeResult, RunAs, SandboxGuard};
use nono_tests::sys::{self, CmdOutput};
use nono_tests::vectors::{self, NETWORK_VECTORS, PROCESS_VECTORS};

const PROBE: &str = env!("CARGO_BIN_EXE_nono-probe");

/// One module per enforcement, each with one test per network vector.
macro_rules! network_vector_tests {
    ($($test:ident => $vector:literal),* $(,)?) => {
        network_vector_tests!(@module net_bpf, Enforcement::Bpf, $($test => $vector),*);
        network_vector_tests!(@module net_seccomp, Enforcement::Seccomp, $($test => $vector),*);
        network_vector_tests!(
            @module net_seccomp_user, Enforcement::SeccompUser, $($test => $vector),*
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

network_vector_tests! {
    vector_tcp4 => "tcp4",
    vector_tcp6 => "tcp6",
    vector_tcp_v4mapped => "tcp-v4mapped",
    vector_tcp_nonblock => "tcp-nonblock",
    vector_tcp_fastopen => "tcp-fastopen",
    vector_udp_sendto => "udp-sendto",
    vector_udp_sendmsg => "udp-sendmsg",
    vector_udp_sendmmsg => "udp-sendmmsg",
    vector_udp_connect_send => "udp-connect-send",
    vector_udp_connected_sendto => "udp-connected-sendto",
    vector_udp6_sendto => "udp6-sendto",
    vector_v4mapped_udp_sendto => "v4mapped-udp-sendto",
    vector_io_uring_connect => "io-uring-connect",
    vector_io_uring_sendmsg => "io-uring-sendmsg",
    vector_raw_socket => "raw-socket",
    vector_raw6_socket => "raw6-socket",
    vector_ping_socket => "ping-socket",
    vector_ping6_socket => "ping6-socket",
    vector_af_packet => "af-packet",
    vector_mptcp => "mptcp",
    vector_int80_socketcall => "int80-socketcall",
    vector_int80_socket => "int80-socket",
    vector_srh6_udp_sockopt => "srh6-udp-sockopt",
    vector_srh6_tcp_sockopt => "srh6-tcp-sockopt",
    vector_srh6_udp_connect_send => "srh6-udp-connect-send",
    vector_srh6_udp_cmsg => "srh6-udp-cmsg",
    vector_srh6_udp_pktoptions => "srh6-udp-pktoptions",
    vector_rh2_udp_sockopt => "rh2-udp-sockopt",
    vector_lsrr4_tcp_sockopt => "lsrr4-tcp-sockopt",
    vector_lsrr4_udp_sockopt => "lsrr4-udp-sockopt",
    vector_ssrr4_udp_sockopt => "ssrr4-udp-sockopt",
    vector_lsrr4_udp_cmsg => "lsrr4-udp-cmsg",
    vector_lsrr4_udp_connected_cmsg => "lsrr4-udp-connected-cmsg",
    vector_unicast_if_loopback4 => "unicast-if-loopback4",
    vector_pktinfo_loopback4 => "pktinfo-loopback4",
}

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

// ---------------------------------------------------------------------------
// Process vectors

/// Runs a process vector in a sandbox with a tcp4 follow-up connect to a fresh
/// port that has a listener, first proving tcp4 reaches the server outside.
/// Returns the probe result, agent output, and the port.
fn run_process_vector(
    h: &Harness,
    guard: &mut SandboxGuard,
    e: Enforcement,
    vector: &str,
    extra: &[String],
) -> (ProbeResult, CmdOutput, u16) {
    run_process_vector_with(h, guard, e, &h.opts(e), vector, extra)
}

/// [`run_process_vector`] with explicit options (e.g. the user that owns a
/// directory passed in `extra`).
fn run_process_vector_with(
    h: &Harness,
    guard: &mut SandboxGuard,
    e: Enforcement,
    opts: &ExecOpts,
    vector: &str,
    extra: &[String],
) -> (ProbeResult, CmdOutput, u16) {
    vectors::assert_reachable_outside(h, vectors::find("tcp4"));
    let port = h.fx.port();
    h.oracle.listen_tcp(port);
    let mut args = vec![
        vector.to_string(),
        "--target".into(),
        SERVER_V4.to_string(),
        "--port".into(),
        port.to_string(),
    ];
    args.extend_from_slice(extra);
    let (r, out) = h.probe_sandboxed_with(opts, &args);
    guard.track(&r);
    h.oracle.settle();
    assert_eq!(
        r.raw["enforcer"].as_str(),
        Some(e.flag()),
        "[{vector}] {}: wrong NONO_ENFORCER: {}",
        e.label(),
        r.raw
    );
    (r, out, port)
}

fn assert_followup_blocked(
    h: &Harness,
    e: Enforcement,
    vector: &str,
    r: &ProbeResult,
    out: &CmdOutput,
    port: u16,
) {
    let pkts = h.oracle.packets_to(Proto::Tcp, port);
    let conns = h.oracle.tcp_connections(port);
    assert!(
        pkts == 0 && conns == 0,
        "[{vector}] {}: LEAK: follow-up tcp4 connect reached the server ({pkts} packets, {conns} \
         connections)\nprobe: {}\nagent: {}",
        e.label(),
        r.raw,
        out.describe()
    );
    assert!(
        r.denied(),
        "[{vector}] {}: follow-up tcp4 connect should fail with EPERM, got ok={} errno={:?} \
         {:?}\nprobe: {}\nagent: {}",
        e.label(),
        r.ok,
        r.errno,
        r.detail,
        r.raw,
        out.describe()
    );
}

fn step<'a>(
    steps: &'a [(String, bool, Option<i32>, String)],
    name: &str,
) -> Option<&'a (String, bool, Option<i32>, String)> {
    steps.iter().find(|s| s.0 == name)
}

/// The probe double-forks and setsid()s a grandchild that outlives it,
/// waits to be reparented and connects. The connect must be denied, and
/// when the agent exits the grandchild must be gone: checked from the host
/// by the run's marker argument (which the grandchild inherits; the pids
/// the probe reports are namespace pids under a privileged agent), and for
/// the unprivileged run also by its fresh uid.
fn process_daemonize(e: Enforcement) {
    let h = Harness::new(PROBE);
    let mut guard = SandboxGuard::new();
    let tmp = sys::TempDir::new("daemonize");
    let opts = h.opts(e);
    if let Some(u) = opts.user {
        tmp.chown(u.uid, u.gid);
    }
    let pidfile = tmp.path("grandchild.pid");
    let extra = vec![
        "--pidfile".to_string(),
        pidfile.display().to_string(),
        "--sleep".into(),
        "30".into(),
    ];
    let (r, out, port) = run_process_vector_with(&h, &mut guard, e, &opts, "daemonize", &extra);
    assert!(
        !out.pipes_held_open,
        "[daemonize] {}: agent stdout/stderr still held open after exit: a sandboxed process \
         survived\n{}",
        e.label(),
        out.describe()
    );
    assert_followup_blocked(&h, e, "daemonize", &r, &out, port);
    let gpid = r.raw["grandchild_pid"].as_i64();
    assert!(
        gpid.is_some() && gpid != r.pid.map(i64::from),
        "[daemonize] {}: no grandchild pid (or the probe's own): {}",
        e.label(),
        r.raw
    );
    assert!(
        r.raw["steps"][0]["reparented"] == true,
        "[daemonize] {}: grandchild was not reparented before its attempt: {}",
        e.label(),
        r.raw
    );
    assert!(
        pidfile.exists(),
        "[daemonize] {}: the grandchild never wrote its pid file",
        e.label()
    );
    let marker = r.raw["marker"].as_str().expect("marker echoed").to_string();
    let gone = sys::wait_until(Duration::from_secs(3), || guard.leftovers().is_empty());
    assert!(
        gone,
        "[daemonize] {}: processes of the sandbox (carrying marker {marker}{}) still alive after \
         the agent exited: {:?} (not killed at exit)\n{}",
        e.label(),
        opts.user
            .map_or(String::new(), |u| format!(", or uid {}", u.uid)),
        guard.leftovers(),
        out.describe()
    );
}

/// mkdir a child cgroup of the sandbox's cgroup (under seccomp: of the
/// probe's own cgroup) and move into it, then connect.
fn process_sub_cgroup(e: Enforcement) {
    let h = Harness::new(PROBE);
    let mut guard = SandboxGuard::new();
    let (r, out, port) = run_process_vector(&h, &mut guard, e, "sub-cgroup", &[]);
    assert_followup_blocked(&h, e, "sub-cgroup", &r, &out, port);
    eprintln!("[sub-cgroup] {}: steps {:?}", e.label(), r.steps());
    if e.has_cgroup() {
        let cg = r.cgroup.clone().expect("NONO_CGROUP reported");
        assert!(
            !Path::new(&cg).exists(),
            "[sub-cgroup] sandbox cgroup {cg} (with child 'escape') not removed after exit; \
             steps: {:?}\n{}",
            r.steps(),
            out.describe()
        );
    } else {
        let steps = r.steps();
        let mkdir = step(&steps, "mkdir");
        assert!(
            mkdir.is_none_or(|s| !s.1),
            "[sub-cgroup] {}: the capability-less sandbox could create a cgroup: {mkdir:?}\n{}",
            e.label(),
            r.raw
        );
    }
}

fn process_parent_cgroup(e: Enforcement) {
    let h = Harness::new(PROBE);
    let mut guard = SandboxGuard::new();
    let (r, out, port) = run_process_vector(&h, &mut guard, e, "parent-cgroup", &[]);
    assert_followup_blocked(&h, e, "parent-cgroup", &r, &out, port);
    let steps = r.steps();
    for name in ["move-parent", "move-root"] {
        let s = step(&steps, name).unwrap_or_else(|| panic!("no step {name}: {}", r.raw));
        assert!(
            !s.1,
            "[parent-cgroup] {}: sandboxed process could move itself out ({name}): {s:?}\n{}",
            e.label(),
            r.raw
        );
    }
}

fn process_detach_bpf(e: Enforcement) {
    let h = Harness::new(PROBE);
    let mut guard = SandboxGuard::new();
    let (r, out, port) = run_process_vector(&h, &mut guard, e, "detach-bpf", &[]);
    let steps = r.steps();
    // The decisive check first: did anything leave?
    assert_followup_blocked(&h, e, "detach-bpf", &r, &out, port);
    let succeeded: Vec<_> = steps
        .iter()
        .filter(|s| {
            s.1 && (s.0.starts_with("prog-detach")
                || s.0.starts_with("link-detach")
                || s.0.starts_with("obj-get")
                || s.0.starts_with("unlink")
                || s.0.starts_with("query"))
        })
        .collect();
    assert!(
        succeeded.is_empty(),
        "[detach-bpf] {}: sandboxed process could manipulate BPF programs (query/obj-get/\
         detach/unlink succeeded): {succeeded:#?}\nall steps: {steps:#?}",
        e.label()
    );
    if e.has_cgroup() {
        assert!(
            step(&steps, "list-pins").is_some(),
            "[detach-bpf] NONO_BPF_PIN_DIR not set in the sandbox: {}",
            r.raw
        );
    }
}

/// A uid-0 process without any capability, in the host's mount namespace,
/// for as long as this value lives (killed by pid on drop). Such processes
/// are common (services with an empty bounding set); a capability-less
/// sandboxed root process passes the ptrace access check for them, so their
/// `/proc/<pid>/root` leads into the host's mount namespace.
struct NoCapsHolder {
    child: Child,
    how: String,
}

impl NoCapsHolder {
    /// Uses `capsh` if it is in PATH, else `nono-probe hold-nocaps`
    /// (forced by `NONO_TESTS_NOCAPS_HELPER=probe`).
    fn start(probe: &str) -> NoCapsHolder {
        let force_probe = std::env::var("NONO_TESTS_NOCAPS_HELPER").is_ok_and(|v| v == "probe");
        let capsh = std::env::var_os("PATH")
            .filter(|_| !force_probe)
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("capsh"))
                    .find(|c| c.is_file())
            });
        let (mut cmd, how) = match capsh {
            Some(c) => {
                let mut cmd = Command::new(&c);
                cmd.args(["--drop=all", "--", "-c", "exec sleep 30"]);
                (
                    cmd,
                    format!("{} --drop=all -- -c 'exec sleep 30'", c.display()),
                )
            }
            None => {
                let mut cmd = Command::new(probe);
                cmd.args(["hold-nocaps", "--sleep", "30"]);
                (cmd, "nono-probe hold-nocaps --sleep 30".to_string())
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {how}: {e}"));
        let holder = NoCapsHolder { child, how };
        let pid = holder.pid();
        let status = |key: &str| sys::status_line(pid, key.trim_end_matches(':'));
        let ready = sys::wait_until(Duration::from_secs(5), || {
            ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:"]
                .iter()
                .all(|k| status(k).is_some_and(|v| v.trim_start_matches('0').is_empty()))
                && status("Uid:").is_some_and(|u| u.split_whitespace().all(|x| x == "0"))
        });
        let own_mnt = fs::read_link("/proc/self/ns/mnt").ok();
        let its_mnt = fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        assert!(
            ready && own_mnt.is_some() && own_mnt == its_mnt,
            "helper `{}` (pid {pid}) did not become a capability-less uid-0 process in the host \
             mount namespace: Uid {:?} CapEff {:?} CapPrm {:?} CapBnd {:?}, mnt ns {its_mnt:?} \
             (ours {own_mnt:?})",
            holder.how,
            status("Uid:"),
            status("CapEff:"),
            status("CapPrm:"),
            status("CapBnd:"),
        );
        holder
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for NoCapsHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// From inside the sandbox, write "0" into the host's cgroup2 `cgroup.procs`
/// through `/proc/<pid>/root` of every process (while a capability-less
/// uid-0 process runs in the host mount namespace), then connect: the
/// connect must stay blocked and the probe must still be inside its
/// cgroup namespace.
fn process_proc_root_cgroup(e: Enforcement) {
    let h = Harness::new(PROBE);
    let holder = NoCapsHolder::start(PROBE);
    let mut guard = SandboxGuard::new();
    let (r, out, port) = run_process_vector(&h, &mut guard, e, "proc-root-cgroup", &[]);
    let steps = r.steps();
    let scan = step(&steps, "scan")
        .map(|s| s.3.clone())
        .unwrap_or_default();
    let writes: Vec<_> = steps
        .iter()
        .filter(|s| s.0.starts_with("write "))
        .map(|s| format!("{} -> ok={} {}", s.0, s.1, s.3))
        .collect();
    let cg_after = r.raw["cgroup_after"]
        .as_str()
        .unwrap_or("<missing>")
        .to_string();
    let report = format!(
        "{}: helper `{}` pid {} (uid 0, no capabilities); scan: {scan}; opened={} written={} \
         via pids {}; writes: {writes:#?}; /proc/self/cgroup afterwards: {cg_after:?}",
        e.label(),
        holder.how,
        holder.pid(),
        r.raw["opened"],
        r.raw["written"],
        r.raw["opened_via_pids"],
    );
    eprintln!("[proc-root-cgroup] {report}");
    let pkts = h.oracle.packets_to(Proto::Tcp, port);
    let conns = h.oracle.tcp_connections(port);
    assert!(
        pkts == 0 && conns == 0,
        "[proc-root-cgroup] LEAK: after the cgroup.procs writes the tcp4 connect reached the \
         server ({pkts} packets, {conns} connections)\n{report}\nprobe: {}\nagent: {}",
        r.raw,
        out.describe()
    );
    let v2 = cg_after
        .lines()
        .find(|l| l.starts_with("0::"))
        .unwrap_or_else(|| panic!("[proc-root-cgroup] no cgroup2 line in {cg_after:?}"));
    assert!(
        v2.starts_with("0::/") && !v2.contains(".."),
        "[proc-root-cgroup] ESCAPE: the sandboxed process left its cgroup namespace's root \
         ({v2:?})\n{report}"
    );
    assert_followup_blocked(&h, e, "proc-root-cgroup", &r, &out, port);
    drop(holder);
}

/// From inside, `kill(getppid(), SIGKILL)` and `kill(-1, SIGKILL)`, then
/// connect. A privileged agent must survive both (the command's parent is
/// the pid namespace's init, which ignores them; nothing else is visible):
/// it exits normally with the command's status and summary. An
/// unprivileged agent (same uid as the command) may be killed, as the
/// README says; the sandbox must then stay confined (the connect fails,
/// nothing arrives) and its processes are found by their uid.
fn process_kill_agent_from_inside(e: Enforcement) {
    let h = Harness::new(PROBE);
    let mut guard = SandboxGuard::new();
    let (r, out, port) = run_process_vector(&h, &mut guard, e, "kill-agent", &[]);
    let steps = r.steps();
    let pkts = h.oracle.packets_to(Proto::Tcp, port) + h.oracle.tcp_connections(port);
    assert_eq!(
        pkts,
        0,
        "[kill-agent] {}: LEAK after kill(getppid()) / kill(-1): {}\n{}",
        e.label(),
        r.raw,
        out.describe()
    );
    assert!(
        !r.ok,
        "[kill-agent] {}: the follow-up connect succeeded: {}",
        e.label(),
        r.raw
    );
    for name in ["kill-parent", "kill-all"] {
        assert!(
            step(&steps, name).is_some(),
            "[kill-agent] no step {name}: {}",
            r.raw
        );
    }
    let sandbox = r.sandbox.clone().unwrap_or_default();
    if e.privileged() {
        assert_eq!(
            out.code(),
            0,
            "[kill-agent] {}: the agent must survive kill(getppid()) and kill(-1) from inside \
             and exit with the command's status 0 (got {:?})\nprobe: {}\n{}",
            e.label(),
            out.status,
            r.raw,
            out.describe()
        );
        assert!(
            out.stderr
                .contains(&format!("nono-agent: sandbox {sandbox}: 1 denied")),
            "[kill-agent] {}: the agent did not finish normally (no summary with 1 denial)\n{}",
            e.label(),
            out.describe()
        );
        assert!(
            r.denied(),
            "[kill-agent] {}: follow-up connect should fail with EPERM: {}",
            e.label(),
            r.raw
        );
    } else {
        eprintln!(
            "[kill-agent] {}: agent status {:?} (a same-uid sandbox may kill it); follow-up \
             connect: errno {:?} {}",
            e.label(),
            out.status,
            r.errno,
            r.detail
        );
        assert!(
            r.errno.is_some(),
            "[kill-agent] {}: the connect after the kills should fail: {}",
            e.label(),
            r.raw
        );
    }
}

/// Takes its parent's descriptors with pidfd_getfd (under a privileged
/// agent the parent is the pid namespace's init, a fork of the agent;
/// without privileges, the agent itself) and uses them as `technique`
/// says; then connects. Nothing may arrive, no descriptor of the parent
/// (beyond the shared standard streams) may be obtainable, and the parent
/// may not be ptraced.
fn steal_fds(e: Enforcement, technique: &str) {
    let h = Harness::new(PROBE);
    let mut guard = SandboxGuard::new();
    let (r, out, port) = run_process_vector(
        &h,
        &mut guard,
        e,
        "steal-fds",
        &["--use".to_string(), technique.to_string()],
    );
    let steps = r.steps();
    let used: Vec<_> = steps
        .iter()
        .filter(|s| !s.0.starts_with("getfd"))
        .map(|s| format!("{}: ok={} {}", s.0, s.1, s.3))
        .collect();
    let report = format!(
        "{}: took from pid {} ({}) {}; then {used:#?}; /proc/self/cgroup afterwards {:?}",
        e.label(),
        r.raw["from"],
        r.raw["from_comm"],
        r.raw["stolen"],
        r.raw["cgroup_after"]
    );
    eprintln!("[steal-fds --use {technique}] {report}");
    assert_followup_blocked(
        &h,
        e,
        &format!("steal-fds --use {technique}"),
        &r,
        &out,
        port,
    );
    let seize = step(&steps, "ptrace-seize");
    assert!(
        seize.is_some_and(|s| !s.1),
        "[steal-fds] {}: the sandbox could ptrace its parent (pid {} {}), which can then do \
         anything it can: {seize:?}",
        e.label(),
        r.raw["from"],
        r.raw["from_comm"]
    );
    // The standard streams (0-2) are the command's own anyway.
    let taken: Vec<_> = steps
        .iter()
        .filter(|s| {
            s.1 && s
                .0
                .strip_prefix("getfd ")
                .and_then(|n| n.parse::<i32>().ok())
                .is_some_and(|n| n > 2)
        })
        .map(|s| s.3.clone())
        .collect();
    assert!(
        taken.is_empty(),
        "[steal-fds] {}: the sandbox could take {} descriptors (beyond 0-2) of its parent (pid \
         {} {}) with pidfd_getfd: {taken:?}",
        e.label(),
        taken.len(),
        r.raw["from"],
        r.raw["from_comm"]
    );
}

fn process_steal_fds_bpf_links(e: Enforcement) {
    steal_fds(e, "links");
}

fn process_steal_fds_cgroup_dir(e: Enforcement) {
    steal_fds(e, "cgroup");
}

fn process_steal_fds_seccomp_listener(e: Enforcement) {
    steal_fds(e, "listener");
}

// ---------------------------------------------------------------------------
// What must keep working

/// A UDP socket connected to loopback sends with `sendmsg` carrying an
/// IP_TOS (v4) / IPV6_TCLASS (v6) control message and no destination
/// (msg_name NULL): the datagrams reach a receiver on loopback in the
/// client netns, outside and inside the sandbox.
fn connected_udp_with_ancillary_data_reaches_loopback(e: Enforcement) {
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
fn unconnected_udp_with_ancillary_data_reaches_loopback(e: Enforcement) {
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
fn udp_send_to_proxy_endpoint_arrives(e: Enforcement) {
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
fn tcp_bulk_to_proxy_endpoint_both_ways(e: Enforcement) {
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
fn loopback_allowed_but_not_127_0_0_2(e: Enforcement) {
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
fn proxy_endpoint_allowed_exactly(e: Enforcement) {
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
fn fd_passing_over_unix_socketpair_works(e: Enforcement) {
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

// ---------------------------------------------------------------------------
// Enforcement under pressure

/// io_uring would perform connects and sends in kernel workers that no
/// syscall filter sees: it must be refused at io_uring_setup (EPERM) under
/// every enforcer, and nothing may reach the server.
fn io_uring_is_refused_at_setup(e: Enforcement) {
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
fn sockaddr_flipped_during_connect_never_leaks(e: Enforcement) {
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
fn parallel_loopback_connects_all_succeed(e: Enforcement) {
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
fn heavy_signals_do_not_break_or_open_connections(e: Enforcement) {
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
