//! Process vectors: escapes that must not lift the confinement (daemonize,
//! cgroup moves, BPF detach, killing the agent, stolen descriptors).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nono_tests::netns::SERVER_V4;
use nono_tests::oracle::Proto;
use nono_tests::runner::{Enforcement, ExecOpts, Harness, ProbeResult, SandboxGuard};
use nono_tests::sys::{self, CmdOutput};
use nono_tests::vectors;

use super::PROBE;

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
pub(super) fn process_daemonize(e: Enforcement) {
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
pub(super) fn process_sub_cgroup(e: Enforcement) {
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

pub(super) fn process_parent_cgroup(e: Enforcement) {
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

pub(super) fn process_detach_bpf(e: Enforcement) {
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
    if e.has_pin_dir() {
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
pub(super) fn process_proc_root_cgroup(e: Enforcement) {
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
pub(super) fn process_kill_agent_from_inside(e: Enforcement) {
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

pub(super) fn process_steal_fds_bpf_links(e: Enforcement) {
    steal_fds(e, "links");
}

pub(super) fn process_steal_fds_cgroup_dir(e: Enforcement) {
    steal_fds(e, "cgroup");
}

pub(super) fn process_steal_fds_seccomp_listener(e: Enforcement) {
    steal_fds(e, "listener");
}
