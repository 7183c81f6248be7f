//! Exit codes and the child's confinement: capabilities, no_new_privs,
//! seccomp, pid and cgroup namespaces.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nono_tests::runner::{exec_command, Enforcement, ExecOpts, SandboxGuard};
use nono_tests::sys::{self, TempDir};

use super::agent_run;

pub(super) fn exit_code_is_propagated(e: Enforcement) {
    let out = agent_run(e, &["sh", "-c", "exit 7"]);
    assert_eq!(
        out.code(),
        7,
        "{}: exit 7 -> 7\n{}",
        e.label(),
        out.describe()
    );
    let out = agent_run(e, &["true"]);
    assert_eq!(
        out.code(),
        0,
        "{}: true -> 0\n{}",
        e.label(),
        out.describe()
    );
}

pub(super) fn exit_code_for_signal_is_128_plus_n(e: Enforcement) {
    let out = agent_run(e, &["sh", "-c", "kill -9 $$"]);
    assert_eq!(
        out.code(),
        137,
        "{}: kill -9 self -> 137\n{}",
        e.label(),
        out.describe()
    );
    assert!(
        out.status.code().is_some(),
        "{}: the agent itself should exit normally with 137, not be killed: {:?}",
        e.label(),
        out.status
    );
}

pub(super) fn exit_code_missing_command_is_127(e: Enforcement) {
    for cmd in [
        "/nonexistent/nono-no-such-command",
        "nono-no-such-command-in-path",
    ] {
        let out = agent_run(e, &[cmd]);
        assert_eq!(
            out.code(),
            127,
            "{}: missing command {cmd} -> 127\n{}",
            e.label(),
            out.describe()
        );
    }
}

pub(super) fn exit_code_not_executable_is_126(e: Enforcement) {
    let tmp = TempDir::new("noexec");
    let f = tmp.path("script.sh");
    fs::write(&f, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    let out = agent_run(e, &[f.to_str().unwrap()]);
    assert_eq!(
        out.code(),
        126,
        "{}: non-executable -> 126\n{}",
        e.label(),
        out.describe()
    );
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status:\n{status}"))
}

/// No capability in any set, no_new_privs, and a seccomp filter (mode 2:
/// the notification filter under seccomp, the hardening filter under bpf).
pub(super) fn child_has_no_capabilities_no_new_privs_and_a_filter(e: Enforcement) {
    let out = agent_run(e, &["cat", "/proc/self/status"]);
    assert_eq!(out.code(), 0, "{}: {}", e.label(), out.describe());
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(&out.stdout, key),
            "0000000000000000",
            "{}: {key} must be 0 in the sandbox",
            e.label()
        );
    }
    assert_eq!(
        status_field(&out.stdout, "NoNewPrivs"),
        "1",
        "{}",
        e.label()
    );
    assert_eq!(
        status_field(&out.stdout, "Seccomp"),
        "2",
        "{}: the command must run under a seccomp filter",
        e.label()
    );
}

/// The child sees NONO_* variables. Privileged: it is pid 2 of its own pid
/// namespace (pid 1 is the agent's init; both are seen from the host through
/// NSpid), in a new cgroup namespace; under bpf it runs in
/// `<cgroup2>/nono/<id>` (cgroup.procs lists host pids), whose cgroup and
/// pin directory are gone after exit. Unprivileged: no new namespaces, no
/// cgroup.
pub(super) fn child_environment_and_namespaces(e: Enforcement) {
    sys::require_prereqs();
    let tmp = TempDir::new("childenv");
    let opts = ExecOpts {
        in_client_netns: false,
        ..ExecOpts::for_enforcement(e)
    };
    if let Some(u) = opts.user {
        tmp.chown(u.uid, u.gid);
    }
    let go = tmp.path("go");
    let stdout = tmp.path("stdout");
    let script = format!(
        r#"
        echo "ID=$NONO_SANDBOX_ID"
        echo "ENF=$NONO_ENFORCER"
        echo "CG=$NONO_CGROUP"
        echo "PIN=$NONO_BPF_PIN_DIR"
        echo "NS=$(readlink /proc/self/ns/cgroup)"
        echo "PIDNS=$(readlink /proc/self/ns/pid)"
        echo "PROCCG=$(grep '^0::' /proc/self/cgroup)"
        echo "SELF=$$"
        n=0; while [ ! -e {go} ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done
        "#,
        go = go.display()
    );
    let mut cmd = exec_command(&sys::agent_bin(), None, &opts);
    let mut child = cmd
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let mut guard = SandboxGuard::new();
    guard.pids.push(child.id() as i32);
    if let Some(u) = opts.user {
        guard.track_uid(u.uid);
    }
    let read = || fs::read_to_string(&stdout).unwrap_or_default();
    let started = sys::wait_until(Duration::from_secs(10), || read().contains("SELF="));
    let text = read();
    let kv: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |k: &str| kv.get(k).cloned().unwrap_or_default();
    let self_pid: i32 = get("SELF").parse().unwrap_or(-1);
    // Host-side view while it runs.
    let cg = PathBuf::from(get("CG"));
    let procs = if e.has_cgroup() {
        sys::cgroup_procs(&cg)
    } else {
        Vec::new()
    };
    let pin = PathBuf::from(get("PIN"));
    let pin_exists = pin.is_dir();
    // The host pid of the shell: by NSpid among the cgroup's processes
    // (bpf), else among all processes whose innermost pid is SELF and that
    // run our script.
    let host_sh = if e.has_cgroup() {
        sys::host_pid_of(&procs, self_pid)
    } else {
        sys::all_pids().into_iter().find(|&p| {
            sys::nspid(p).and_then(|n| n.last().copied()) == Some(self_pid)
                && fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.windows(5).any(|w| w == b"SELF="))
        })
    };
    let host_nspid = host_sh.and_then(sys::nspid);
    let init = host_sh
        .and_then(|p| sys::status_line(p, "PPid"))
        .and_then(|p| p.parse::<i32>().ok());
    let init_nspid = init.and_then(sys::nspid);
    fs::write(&go, "").unwrap();
    let st = sys::wait_child(&mut child, Duration::from_secs(30), "agent");
    let ctx = format!(
        "{}: child printed {text:?}; host pid of the shell {host_sh:?} (NSpid {host_nspid:?}), \
         its parent {init:?} (NSpid {init_nspid:?}); cgroup.procs {procs:?}",
        e.label()
    );
    assert!(started, "child never printed its info: {ctx}");
    assert!(st.success(), "agent: {st:?}\n{ctx}");
    let id = get("ID");
    assert!(!id.is_empty(), "NONO_SANDBOX_ID empty: {ctx}");
    assert_eq!(get("ENF"), e.flag(), "NONO_ENFORCER: {ctx}");
    let own_cgns = fs::read_link("/proc/self/ns/cgroup").unwrap();
    let own_pidns = fs::read_link("/proc/self/ns/pid").unwrap();
    let host_sh = host_sh.unwrap_or_else(|| panic!("shell not found from the host: {ctx}"));
    let host_nspid = host_nspid.unwrap_or_default();
    // Every enforcement here gets a pid namespace: privileged, and
    // unprivileged in the user namespace it can make.
    assert_eq!(
        self_pid, 2,
        "the command must be pid 2 of its own pid namespace: {ctx}"
    );
    assert_eq!(
        host_nspid,
        vec![host_sh, 2],
        "NSpid of the command seen from the host: {ctx}"
    );
    assert_eq!(
        init_nspid.as_ref().and_then(|n| n.last().copied()),
        Some(1),
        "the command's parent must be pid 1 (the agent's init) of its namespace: {ctx}"
    );
    assert_ne!(
        get("PIDNS"),
        own_pidns.to_string_lossy(),
        "the command must be in a new pid namespace: {ctx}"
    );
    if e.privileged() {
        assert_ne!(
            get("NS"),
            own_cgns.to_string_lossy(),
            "the command must be in a new cgroup namespace: {ctx}"
        );
        assert_eq!(
            get("PROCCG"),
            "0::/",
            "the cgroup namespace root should be the command's cgroup: {ctx}"
        );
    } else {
        assert_eq!(get("NS"), own_cgns.to_string_lossy(), "{ctx}");
    }
    if e.has_cgroup() {
        let cg2 = sys::cgroup2_mount().unwrap();
        assert_eq!(
            cg,
            cg2.join("nono").join(&id),
            "NONO_CGROUP must be <cgroup2>/nono/<id>: {ctx}"
        );
        assert!(
            procs.contains(&host_sh),
            "the command (host pid {host_sh}) is not in {}/cgroup.procs: {ctx}",
            cg.display()
        );
        assert!(
            init.is_some_and(|i| procs.contains(&i)),
            "the init is not in the sandbox cgroup: {ctx}"
        );
        assert!(
            pin_exists,
            "NONO_BPF_PIN_DIR {} does not exist while running",
            pin.display()
        );
        let bpffs = sys::bpffs_mount().expect("bpffs mounted");
        assert!(
            pin.starts_with(bpffs.join("nono")),
            "pin dir {} not under <bpffs>/nono",
            pin.display()
        );
        assert!(!cg.exists(), "cgroup left after exit");
        assert!(!pin.exists(), "pin dir left after exit");
    } else {
        assert!(
            get("CG").is_empty() && get("PIN").is_empty(),
            "no cgroup or pins without the bpf enforcer: {ctx}"
        );
    }
}

/// SIGTERM, SIGINT and SIGHUP sent to the agent reach the command (which
/// runs in a session of its own, out of reach of the caller's terminal),
/// and the command's exit status becomes the agent's. With and without a
/// proxy: the agent runs on one thread without one, on worker threads with
/// one, and forwards from a task of its runtime either way.
pub(super) fn signals_to_the_agent_reach_the_command(e: Enforcement) {
    use std::io::BufRead as _;
    sys::require_prereqs();
    let cases = [
        (libc::SIGTERM, "TERM", false),
        (libc::SIGINT, "INT", false),
        (libc::SIGHUP, "HUP", true),
    ];
    for (sig, name, with_proxy) in cases {
        let mut opts = ExecOpts {
            in_client_netns: false,
            ..ExecOpts::for_enforcement(e)
        };
        if with_proxy {
            opts.extra
                .extend(["--allow-domain".to_string(), "example.test".to_string()]);
        }
        let mut cmd = exec_command(&sys::agent_bin(), None, &opts);
        cmd.args([
            "sh",
            "-c",
            &format!(
                "trap 'echo got-{name}; exit 42' {name}; echo ready; while :; do sleep 0.05; done"
            ),
        ]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting the agent");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(20));
        if ready.as_deref() != Ok("ready") {
            let _ = child.kill();
            let out = child.wait_with_output().expect("agent output");
            panic!(
                "{} ({name}): the command did not start: {ready:?}\n{}",
                e.label(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // SAFETY: a signal to the agent this test started (not yet reaped).
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = sys::wait_child(&mut child, Duration::from_secs(20), "the agent");
        let got = rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(
            got.as_deref(),
            Ok(format!("got-{name}").as_str()),
            "{} (SIG{name}, proxy: {with_proxy}): the command did not get the signal",
            e.label()
        );
        assert_eq!(
            status.code(),
            Some(42),
            "{} (SIG{name}, proxy: {with_proxy}): the agent's exit status is not the command's: {status:?}",
            e.label()
        );
    }
}

/// A signal to the agent reaches the command while the caller's terminal
/// takes no output (a stalled terminal or ssh session): the command prints
/// without pause on its pseudo-terminal, the test stops reading the
/// caller's side (a pty of its own) and waits until the agent is blocked
/// writing to it (a thread of the agent in `n_tty_write`), then sends
/// SIGTERM. The command's trap must run before the test reads again (its
/// marker file is the oracle); then the output is drained and the agent
/// must exit with the command's status. Without and with a proxy (one
/// thread, or worker threads). Before the fix the forwarding task waited
/// behind the relay's blocking write.
pub(super) fn signals_reach_the_command_while_the_terminal_is_full(e: Enforcement) {
    use std::os::fd::AsRawFd as _;
    sys::require_prereqs();
    for with_proxy in [false, true] {
        let tmp = TempDir::new("sig-full-tty");
        fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o777)).expect("chmod");
        let mark = tmp.path("got-term");
        let mut opts = ExecOpts {
            in_client_netns: false,
            ..ExecOpts::for_enforcement(e)
        };
        if with_proxy {
            opts.extra
                .extend(["--allow-domain".to_string(), "example.test".to_string()]);
        }
        let (master, slave) = sys::open_pty().expect("openpty");
        let mut cmd = exec_command(&sys::agent_bin(), None, &opts);
        cmd.args([
            "sh",
            "-c",
            &format!(
                "trap 'echo got > {}; exit 42' TERM; \
                 (while :; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done) & wait",
                mark.display()
            ),
        ]);
        cmd.stdin(slave.try_clone().expect("dup"))
            .stdout(slave.try_clone().expect("dup"))
            .stderr(slave);
        let mut child = cmd.spawn().expect("starting the agent");
        let agent = child.id() as i32;
        drop(cmd);
        // Read until the command's output flows.
        let mut seen = Vec::new();
        let flowing = sys::wait_until(Duration::from_secs(20), || {
            let mut p = libc::pollfd {
                fd: master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a read into a stack buffer.
            unsafe {
                if libc::poll(&mut p, 1, 100) == 1 {
                    let mut b = [0u8; 4096];
                    let n = libc::read(master.as_raw_fd(), b.as_mut_ptr().cast(), b.len());
                    if n > 0 {
                        seen.extend_from_slice(&b[..n as usize]);
                    }
                }
            }
            seen.windows(8).any(|w| w == b"xxxxxxxx")
        });
        // Not reading any more: wait until the agent blocks writing to us.
        let blocked = flowing
            && sys::wait_until(Duration::from_secs(20), || {
                fs::read_dir(format!("/proc/{agent}/task"))
                    .map(|rd| {
                        rd.flatten().any(|t| {
                            fs::read_to_string(t.path().join("stack"))
                                .is_ok_and(|s| s.contains("n_tty_write"))
                        })
                    })
                    .unwrap_or(false)
            });
        let mut forwarded = false;
        if blocked {
            // SAFETY: a signal to the agent this test started (not yet reaped).
            unsafe { libc::kill(agent, libc::SIGTERM) };
            forwarded = sys::wait_until(Duration::from_secs(10), || mark.exists());
        }
        // Drain, so that the agent (and, if it did not forward, the signal)
        // goes on; then it must end with the command's status.
        let fd = master.as_raw_fd();
        let drain = std::thread::spawn(move || {
            let mut b = [0u8; 65536];
            // SAFETY: reads into a stack buffer from the master we own.
            while unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) } > 0 {}
            drop(master);
        });
        if !blocked {
            let _ = child.kill();
        }
        let status = sys::wait_child(&mut child, Duration::from_secs(20), "the agent");
        let _ = drain.join();
        assert!(
            flowing && blocked,
            "{} (proxy: {with_proxy}): the command's output never filled the terminal \
             (flowing {flowing}, agent blocked writing {blocked}): {:?}",
            e.label(),
            String::from_utf8_lossy(&seen)
        );
        assert!(
            forwarded,
            "{} (proxy: {with_proxy}): SIGTERM to the agent did not reach the command while \
             the caller's terminal took no output (it did once the test read again: {})",
            e.label(),
            mark.exists()
        );
        assert_eq!(
            status.code(),
            Some(42),
            "{} (proxy: {with_proxy}): the agent's exit status is not the command's: {status:?}",
            e.label()
        );
    }
}
