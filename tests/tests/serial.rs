//! Tests that look at global state (`<cgroup2>/nono/`, `<bpffs>/nono/`,
//! `/run/nono-agent/`) or run `nono-agent cleanup` (which acts on every
//! orphaned sandbox). They are serialized within this binary, and cargo
//! runs test binaries one at a time, so no other sandbox of this suite runs
//! concurrently. Sandboxes of other users of the machine are told apart by
//! their owner lock (held while their agent lives).
//!
//! Needs root and a real kernel. Run with `cargo test -p nono-tests --test serial`.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use nono_tests::netns::SERVER_V4;
use nono_tests::oracle::Proto;
use nono_tests::profilelab::{lock_held, sandbox_ids, STATE_DIR};
use nono_tests::runner::{fresh_marker, Enforcement, Harness, ProbeResult, SandboxGuard};
use nono_tests::sys::{self, TempDir};
use nono_tests::vectors;

const PROBE: &str = env!("CARGO_BIN_EXE_nono-probe");
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What is left of sandbox `id`: its cgroup, pin dir and lock file.
fn remains_of(id: &str) -> Vec<PathBuf> {
    let mut v = vec![
        sys::cgroup2_mount().expect("cgroup2").join("nono").join(id),
        PathBuf::from(STATE_DIR).join(format!("{id}.lock")),
    ];
    if let Some(b) = sys::bpffs_mount() {
        v.push(b.join("nono").join(id));
    }
    v.into_iter().filter(|p| p.exists()).collect()
}

/// Stale sandboxes: present, but nobody holds their lock.
fn stale_ids() -> Vec<String> {
    sandbox_ids()
        .into_iter()
        .filter(|id| !lock_held(id))
        .collect()
}

#[test]
fn bpf_no_leftovers_after_run() {
    no_leftovers_after_run(Enforcement::Bpf);
}

#[test]
fn seccomp_no_leftovers_after_run() {
    no_leftovers_after_run(Enforcement::Seccomp);
}

/// After a sandbox with denials, sub-cgroups and a daemon exits, nothing of
/// it is left (cgroup, pins, lock file, processes), and no stale sandbox
/// remains (each exec sweeps those first).
fn no_leftovers_after_run(e: Enforcement) {
    let _s = serial();
    let h = Harness::new(PROBE);
    let port = h.fx.port();
    let opts = h.opts(e);
    let p = h.probe_for(&opts).display().to_string();
    let tmp = TempDir::new("leftover");
    let marker = fresh_marker();
    let script = format!(
        "{p} tcp4 --target {SERVER_V4} --port {port}; \
         {p} sub-cgroup --target {SERVER_V4} --port {port}; \
         {p} daemonize --target {SERVER_V4} --port {port} --pidfile {} --sleep 30 --marker {marker}",
        tmp.path("pid").display()
    );
    let out = h.agent_exec(&opts, &["sh", "-c", &script]);
    let rs = ProbeResult::parse_all(&out.stdout);
    let mut guard = SandboxGuard::new();
    guard.markers.push(marker.clone());
    rs.iter().for_each(|r| guard.track(r));
    assert_eq!(rs.len(), 3, "{}", out.describe());
    let r = &rs[0];
    let id = r.sandbox.clone().expect("sandbox id");
    if e.has_cgroup() {
        let cg = PathBuf::from(r.cgroup.clone().expect("cgroup"));
        let pin = PathBuf::from(r.pin_dir.clone().expect("pin dir"));
        let cg_root = sys::cgroup2_mount().unwrap().join("nono");
        assert!(
            cg.starts_with(&cg_root),
            "cgroup {} not under {}",
            cg.display(),
            cg_root.display()
        );
        let bpffs = sys::bpffs_mount().expect("bpffs mounted after a run");
        assert!(
            pin.starts_with(bpffs.join("nono")),
            "pin dir {} not under <bpffs>/nono",
            pin.display()
        );
    }
    assert!(
        sys::wait_until(Duration::from_secs(3), || sys::pids_with_marker(&marker)
            .is_empty()),
        "{}: sandbox {id}: the daemon (marker {marker}) survived the agent: {:?}",
        e.label(),
        sys::pids_with_marker(&marker)
    );
    assert_eq!(
        remains_of(&id),
        Vec::<PathBuf>::new(),
        "{}: sandbox {id} left these behind",
        e.label()
    );
    let stale = stale_ids();
    assert!(
        stale.is_empty(),
        "{}: stale sandboxes (no live owner) remain after an exec, which sweeps them first: \
         {stale:?} ({:?})",
        e.label(),
        stale.iter().map(|s| remains_of(s)).collect::<Vec<_>>()
    );
}

#[test]
fn bpf_kill_agent_from_outside_then_cleanup() {
    kill_agent_from_outside(Enforcement::Bpf);
}

#[test]
fn seccomp_kill_agent_from_outside_then_cleanup() {
    kill_agent_from_outside(Enforcement::Seccomp);
}

#[test]
fn seccomp_user_kill_agent_from_outside_stays_confined() {
    kill_agent_from_outside(Enforcement::SeccompUser);
}

fn log_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The test SIGKILLs the agent while the sandboxed probe connects to the
/// server every 200 ms (logging each attempt to a file the test reads).
/// Under bpf the probe must keep running and keep being refused (the
/// oracle sees nothing), still in the sandbox cgroup, where a fresh process
/// is refused too. Under seccomp it must either keep running refused (the
/// supervisor is gone: ENOSYS) or die with its agent. Then, as root,
/// `nono-agent cleanup` must leave nothing: no process, cgroup, pins or
/// lock. Unprivileged there is nothing global to clean up: what is left is
/// reported (and killed by uid).
fn kill_agent_from_outside(e: Enforcement) {
    let _s = serial();
    let h = Harness::new(PROBE);
    vectors::assert_reachable_outside(&h, vectors::find("tcp4"));
    let tmp = TempDir::new("killagent");
    let opts = h.opts(e);
    let mut guard = SandboxGuard::new();
    if let Some(u) = opts.user {
        tmp.chown(u.uid, u.gid);
        guard.track_uid(u.uid);
    }
    let logdir = tmp.path("log");
    fs::create_dir(&logdir).unwrap();
    if let Some(u) = opts.user {
        std::os::unix::fs::chown(&logdir, Some(u.uid), Some(u.gid)).unwrap();
    }
    let log = logdir.join("connect.log");
    let port = h.fx.port();
    h.oracle.listen_tcp(port);
    let marker = fresh_marker();
    guard.markers.push(marker.clone());
    let mut agent = h
        .agent_command(&opts)
        .arg(h.probe_for(&opts))
        .args(["connect-loop", "--target", &SERVER_V4.to_string()])
        .args(["--port", &port.to_string(), "--interval-ms", "200"])
        .args(["--secs", "60", "--marker", &marker])
        .arg("--logdir")
        .arg(&logdir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(tmp.path("stdout")).unwrap())
        .stderr(fs::File::create(tmp.path("stderr")).unwrap())
        .spawn()
        .expect("spawn agent");
    let agent_pid = agent.id() as i32;
    guard.pids.push(agent_pid);
    let started = sys::wait_until(Duration::from_secs(15), || log_lines(&log).len() >= 3);
    let stderr = || fs::read_to_string(tmp.path("stderr")).unwrap_or_default();
    assert!(
        started,
        "{}: the sandboxed probe never logged 3 attempts; agent stderr: {}",
        e.label(),
        stderr()
    );
    let info: Value = serde_json::from_str(
        &fs::read_to_string(logdir.join("info.json")).expect("probe info.json"),
    )
    .expect("info.json is JSON");
    let id = info["sandbox"].as_str().expect("sandbox id").to_string();
    assert_eq!(
        sys::comm(agent_pid).as_deref(),
        Some("nono-agent"),
        "the spawned child (pid {agent_pid}) should be the agent itself (nsenter/setpriv exec)"
    );
    // The agent's command line carries the marker too (and so does the
    // init, a fork of the agent): keep the others.
    let probe_pids: Vec<i32> = sys::pids_with_marker(&marker)
        .into_iter()
        .filter(|&p| p != agent_pid)
        .collect();
    assert!(
        !probe_pids.is_empty(),
        "{}: no process carries the probe's marker",
        e.label()
    );
    let before_kill = log_lines(&log).len();
    assert!(
        log_lines(&log).iter().all(|l| l["ok"] == false),
        "{}: a connect succeeded while the agent was alive: {:?}",
        e.label(),
        log_lines(&log)
    );

    // SAFETY: SIGKILL to the agent we spawned (checked by comm above).
    unsafe { libc::kill(agent_pid, libc::SIGKILL) };
    let st = sys::wait_child(&mut agent, Duration::from_secs(10), "killed agent");
    assert_eq!(st.signal(), Some(libc::SIGKILL), "agent status {st:?}");

    // Under seccomp the sandbox may instead die with its agent (fail
    // closed too); under bpf it must outlive it (pinned links).
    let died_with_agent = !e.has_cgroup()
        && sys::wait_until(Duration::from_secs(2), || {
            sys::pids_with_marker(&marker).is_empty()
        });
    // The probe outlives its agent, still trying, still refused.
    let kept_going = died_with_agent
        || sys::wait_until(Duration::from_secs(5), || {
            log_lines(&log).len() >= before_kill + 8
        });
    h.oracle.settle();
    let lines = log_lines(&log);
    let after: Vec<&Value> = lines.iter().skip(before_kill + 2).collect();
    let leaked = h.oracle.packets_to(Proto::Tcp, port) + h.oracle.tcp_connections(port);
    assert_eq!(
        leaked,
        0,
        "{}: LEAK after the agent was killed: the server saw {leaked} packets/connections on \
         port {port}; attempts after the kill: {after:?}",
        e.label()
    );
    assert!(
        kept_going && (died_with_agent || !sys::pids_with_marker(&marker).is_empty()),
        "{}: the sandboxed probe did not keep running after the agent died ({} attempts logged \
         before the kill, {} in all; processes {:?})",
        e.label(),
        before_kill,
        lines.len(),
        sys::pids_with_marker(&marker)
    );
    assert!(
        after
            .iter()
            .all(|l| l["ok"] == false && l["errno"].is_number()),
        "{}: a connect after the agent's death was not refused: {after:?}",
        e.label()
    );
    let errnos: std::collections::BTreeSet<i64> =
        after.iter().filter_map(|l| l["errno"].as_i64()).collect();
    eprintln!(
        "[kill-agent] {}: {}; the probe's connects after the agent's death failed with errno \
         {errnos:?}",
        e.label(),
        if died_with_agent {
            "the sandbox died with its agent"
        } else {
            "the sandbox outlived its agent"
        }
    );

    if e.has_cgroup() {
        let cg = PathBuf::from(info["cgroup"].as_str().expect("cgroup"));
        let procs = sys::cgroup_procs(&cg);
        let probe_host = sys::host_pid_of(&procs, info["pid"].as_i64().unwrap_or(-1) as i32);
        assert!(
            probe_host.is_some() && probe_pids.iter().all(|p| procs.contains(p)),
            "orphaned probe (ns pid {}, host pids {probe_pids:?}) not in {}/cgroup.procs \
             ({procs:?})",
            info["pid"],
            cg.display()
        );
        // A fresh process placed into the orphaned cgroup is refused too.
        let port2 = h.fx.port();
        h.oracle.listen_tcp(port2);
        let cgprocs = cg.join("cgroup.procs");
        let mut cmd = h.fx.client_command(&h.probe);
        cmd.args([
            "tcp4",
            "--target",
            &SERVER_V4.to_string(),
            "--port",
            &port2.to_string(),
        ]);
        // SAFETY: pre_exec only writes a file (async-signal-safe enough for a test).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || fs::write(&cgprocs, "0"));
        }
        let out2 = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
        let r2 = ProbeResult::parse(&out2.stdout).unwrap_or_else(|| {
            panic!(
                "no result from process moved into the cgroup: {}",
                out2.describe()
            )
        });
        h.oracle.settle();
        assert_eq!(
            h.oracle.packets_to(Proto::Tcp, port2) + h.oracle.tcp_connections(port2),
            0,
            "LEAK from a process in the orphaned cgroup: {}",
            r2.raw
        );
        assert!(
            r2.denied(),
            "orphaned cgroup no longer enforces: {}",
            r2.raw
        );
    }

    if !e.privileged() {
        // No cleanup for an unprivileged sandbox: nothing global to find it
        // by. Report what is left (killed by the guard, by uid).
        eprintln!(
            "[kill-agent] {}: processes left after the agent's death: {:?}",
            e.label(),
            guard.leftovers()
        );
        return;
    }

    let holders: Vec<String> = sys::all_pids()
        .into_iter()
        .filter(|p| {
            fs::read_dir(format!("/proc/{p}/fd")).is_ok_and(|rd| {
                rd.flatten().any(|f| {
                    fs::read_link(f.path()).is_ok_and(|l| l.ends_with(format!("{id}.lock")))
                })
            })
        })
        .map(|p| format!("{p} ({:?}, NSpid {:?})", sys::comm(p), sys::nspid(p)))
        .collect();
    let out = sys::run_timeout(Command::new(&h.agent).arg("cleanup"), sys::CMD_TIMEOUT);
    assert!(
        out.status.success(),
        "nono-agent cleanup failed: {}",
        out.describe()
    );
    let gone = sys::wait_until(Duration::from_secs(3), || {
        sys::pids_with_marker(&marker).is_empty()
    });
    let remains = remains_of(&id);
    assert!(
        gone && remains.is_empty(),
        "{}: `nono-agent cleanup` after the agent was SIGKILLed left sandbox {id}: processes \
         {:?}, files {remains:?}; lock {} (held by {holders:?} before cleanup)\ncleanup: {}",
        e.label(),
        sys::pids_with_marker(&marker),
        if lock_held(&id) { "still held" } else { "free" },
        out.describe()
    );
    assert!(
        out.stdout.contains(&id) || out.stderr.contains(&id),
        "cleanup should say what it did (mention sandbox {id}): {}",
        out.describe()
    );
    let n = log_lines(&log).len();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        log_lines(&log).len(),
        n,
        "the probe still logs attempts after cleanup"
    );
}
