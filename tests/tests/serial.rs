//! Tests that look at global state (`<cgroup2>/nono/`, `<bpffs>/nono/`) or run
//! `nono-agent cleanup` (which acts on every orphaned sandbox). They are
//! serialized within this binary, and cargo runs test binaries one at a time,
//! so no other sandbox of this suite runs concurrently.
//!
//! Needs root and a real kernel. Run with `cargo test -p nono-tests --test serial`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nono_tests::netns::SERVER_V4;
use nono_tests::oracle::Proto;
use nono_tests::runner::{ExecOpts, Harness, ProbeResult, SandboxGuard};
use nono_tests::sys::{self, TempDir};
use nono_tests::vectors;

const PROBE: &str = env!("CARGO_BIN_EXE_nono-probe");
const ENFORCER: &str = "bpf";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn nono_dirs() -> (PathBuf, Option<PathBuf>) {
    let cg = sys::cgroup2_mount().expect("cgroup2 mount").join("nono");
    let pins = sys::bpffs_mount().map(|b| b.join("nono"));
    (cg, pins)
}

fn entries(d: &Option<PathBuf>) -> Vec<String> {
    d.as_deref().map(sys::dir_entries).unwrap_or_default()
}

/// After a sandbox with denials, sub-cgroups and a daemon exits, nothing is
/// left under `<cgroup2>/nono/` or `<bpffs>/nono/`.
#[test]
fn no_cgroup_or_pins_left_after_run() {
    let _s = serial();
    let h = Harness::new(PROBE);
    let (cg_root, pin_root) = nono_dirs();
    let cg_before = sys::subdirs(&cg_root);
    let pins_before = entries(&pin_root);
    let port = h.fx.port();
    let p = h.probe_path();
    let tmp = TempDir::new("leftover");
    let script = format!(
        "{p} tcp4 --target {SERVER_V4} --port {port}; \
         {p} sub-cgroup --target {SERVER_V4} --port {port}; \
         {p} daemonize --target {SERVER_V4} --port {port} --pidfile {} --sleep 30",
        tmp.path("pid").display()
    );
    let opts = ExecOpts {
        enforcer: Some(ENFORCER.into()),
        proxy_endpoints: vec![h.proxy_endpoint()],
        in_client_netns: true,
        ..Default::default()
    };
    let out = h.agent_exec(&opts, &["sh", "-c", &script]);
    let rs = ProbeResult::parse_all(&out.stdout);
    let mut guard = SandboxGuard::new();
    rs.iter().for_each(|r| guard.track(r));
    assert_eq!(rs.len(), 3, "{}", out.describe());
    let r = &rs[0];
    let id = r.sandbox.clone().expect("sandbox id");
    let cg = PathBuf::from(r.cgroup.clone().expect("cgroup"));
    let pin = PathBuf::from(r.pin_dir.clone().expect("pin dir"));
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
    assert!(!cg.exists(), "sandbox {id}: cgroup {} left", cg.display());
    assert!(
        !pin.exists(),
        "sandbox {id}: pin dir {} left",
        pin.display()
    );
    let (cg_root, pin_root) = nono_dirs();
    let new_cg: Vec<_> = sys::subdirs(&cg_root)
        .into_iter()
        .filter(|e| !cg_before.contains(e))
        .collect();
    let new_pins: Vec<_> = entries(&pin_root)
        .into_iter()
        .filter(|e| !pins_before.contains(e))
        .collect();
    assert!(
        new_cg.is_empty(),
        "new entries left in {}: {new_cg:?}",
        cg_root.display()
    );
    assert!(
        new_pins.is_empty(),
        "new entries left in bpffs nono/: {new_pins:?}"
    );
    assert!(
        cg_before.is_empty() && pins_before.is_empty(),
        "stale sandboxes existed before the run (from earlier runs?): cgroups {cg_before:?}, \
         pins {pins_before:?}"
    );
}

/// The sandboxed process kills the agent (its parent). It must stay confined
/// (still in the cgroup, connect still denied, nothing on the wire);
/// `nono-agent cleanup` then kills it and removes its cgroup and pins.
#[test]
fn kill_agent_then_cleanup() {
    let _s = serial();
    let h = Harness::new(PROBE);
    vectors::assert_reachable_outside(&h, vectors::find("tcp4"));
    let tmp = TempDir::new("killagent");
    let pidfile = tmp.path("probe.pid");
    let stdout = tmp.path("stdout");
    let stderr = tmp.path("stderr");
    let port = h.fx.port();
    h.oracle.listen_tcp(port);
    let opts = ExecOpts {
        enforcer: Some(ENFORCER.into()),
        proxy_endpoints: vec![h.proxy_endpoint()],
        in_client_netns: true,
        ..Default::default()
    };
    let mut guard = SandboxGuard::new();
    let mut agent = h
        .agent_command(&opts)
        .arg(&h.probe)
        .args(["kill-agent", "--target", &SERVER_V4.to_string()])
        .args(["--port", &port.to_string(), "--sleep", "60"])
        .arg("--pidfile")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout).unwrap())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn agent");
    guard.pids.push(agent.id() as i32);
    let st = sys::wait_child(&mut agent, Duration::from_secs(30), "agent");
    let reported = sys::wait_until(Duration::from_secs(10), || pidfile.exists());
    let so = fs::read_to_string(&stdout).unwrap_or_default();
    let se = fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        reported,
        "probe never reported after killing the agent (agent status {st:?})\nstdout: {so}\n\
         stderr: {se}"
    );
    let r = ProbeResult::parse(&so).unwrap_or_else(|| panic!("no probe result: {so}\n{se}"));
    guard.track(&r);
    let pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    guard.pids.push(pid);
    let kill = r.steps().into_iter().find(|s| s.0 == "kill-parent");
    assert!(
        kill.as_ref().is_some_and(|k| k.1),
        "probe could not kill the agent: {kill:?} (agent status {st:?})"
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "agent should have died of SIGKILL: {st:?}"
    );
    // Confinement survives the agent.
    h.oracle.settle();
    assert_eq!(
        h.oracle.packets_to(Proto::Tcp, port) + h.oracle.tcp_connections(port),
        0,
        "LEAK after the agent died: {}",
        r.raw
    );
    assert!(
        r.denied(),
        "connect after agent death must be denied: {}",
        r.raw
    );
    assert!(
        sys::pid_alive(pid),
        "probe {pid} should still be alive (orphaned sandbox)"
    );
    let cg = PathBuf::from(r.cgroup.clone().expect("cgroup"));
    let pin = PathBuf::from(r.pin_dir.clone().expect("pin dir"));
    let in_cg = fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
    assert!(
        in_cg.split_whitespace().any(|p| p == pid.to_string()),
        "orphaned probe {pid} not in {}/cgroup.procs ({in_cg:?})",
        cg.display()
    );
    // A fresh process placed into the orphaned cgroup is still denied.
    let port2 = h.fx.port();
    h.oracle.listen_tcp(port2);
    let procs = cg.join("cgroup.procs");
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
        cmd.pre_exec(move || fs::write(&procs, "0"));
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

    // Cleanup.
    let out = sys::run_timeout(Command::new(&h.agent).arg("cleanup"), sys::CMD_TIMEOUT);
    assert!(
        out.status.success(),
        "nono-agent cleanup failed: {}",
        out.describe()
    );
    let sandbox = r.sandbox.clone().unwrap_or_default();
    assert!(
        out.stdout.contains(&sandbox) || out.stderr.contains(&sandbox),
        "cleanup should say what it did (mention sandbox {sandbox}): {}",
        out.describe()
    );
    assert!(
        sys::wait_until(Duration::from_secs(3), || !sys::pid_alive(pid)),
        "cleanup did not kill orphaned probe {pid}"
    );
    assert!(!cg.exists(), "cleanup left cgroup {}", cg.display());
    assert!(!pin.exists(), "cleanup left pin dir {}", pin.display());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || !sys::pid_alive(pid),
        "probe still alive"
    );
}
