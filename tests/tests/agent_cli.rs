//! `nono-agent exec` behaviour: exit codes, events file, summary line,
//! confinement of the child (caps, no_new_privs, cgroup), concurrency.
//!
//! Needs root and a real kernel. Run with `cargo test -p nono-tests --test agent_cli`.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use nono_tests::netns::SERVER_V4;
use nono_tests::runner::{parse_summary, ExecOpts, Harness, ProbeResult, SandboxGuard};
use nono_tests::sys::{self, CmdOutput, TempDir};

const PROBE: &str = env!("CARGO_BIN_EXE_nono-probe");
const ENFORCER: &str = "bpf";

fn opts_local() -> ExecOpts {
    // Commands that send no traffic may run in the test's own netns.
    ExecOpts {
        enforcer: Some(ENFORCER.into()),
        ..Default::default()
    }
}

fn agent_run(opts: &ExecOpts, argv: &[&str]) -> CmdOutput {
    sys::require_prereqs();
    let agent = sys::agent_bin();
    let mut cmd = std::process::Command::new(&agent);
    cmd.arg("exec");
    if let Some(e) = &opts.enforcer {
        cmd.args(["--enforcer", e]);
    }
    if opts.quiet {
        cmd.arg("--quiet");
    }
    cmd.arg("--").args(argv);
    sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT)
}

// ---------------------------------------------------------------------------
// Exit codes

#[test]
fn exit_code_is_propagated() {
    let out = agent_run(&opts_local(), &["sh", "-c", "exit 7"]);
    assert_eq!(out.code(), 7, "exit 7 -> 7\n{}", out.describe());
    let out = agent_run(&opts_local(), &["true"]);
    assert_eq!(out.code(), 0, "true -> 0\n{}", out.describe());
}

#[test]
fn exit_code_for_signal_is_128_plus_n() {
    let out = agent_run(&opts_local(), &["sh", "-c", "kill -9 $$"]);
    assert_eq!(out.code(), 137, "kill -9 self -> 137\n{}", out.describe());
    assert!(
        out.status.code().is_some(),
        "the agent itself should exit normally with 137, not be killed: {:?}",
        out.status
    );
}

#[test]
fn exit_code_missing_command_is_127() {
    let out = agent_run(&opts_local(), &["/nonexistent/nono-no-such-command"]);
    assert_eq!(
        out.code(),
        127,
        "missing command -> 127\n{}",
        out.describe()
    );
    let out = agent_run(&opts_local(), &["nono-no-such-command-in-path"]);
    assert_eq!(
        out.code(),
        127,
        "missing command (PATH lookup) -> 127\n{}",
        out.describe()
    );
}

#[test]
fn exit_code_not_executable_is_126() {
    let tmp = TempDir::new("noexec");
    let f = tmp.path("script.sh");
    fs::write(&f, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    let out = agent_run(&opts_local(), &[f.to_str().unwrap()]);
    assert_eq!(out.code(), 126, "non-executable -> 126\n{}", out.describe());
}

// ---------------------------------------------------------------------------
// Child confinement

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status:\n{status}"))
}

#[test]
fn child_has_no_capabilities_and_no_new_privs() {
    let out = agent_run(&opts_local(), &["cat", "/proc/self/status"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(&out.stdout, key),
            "0000000000000000",
            "{key} must be 0 in the sandbox"
        );
    }
    assert_eq!(status_field(&out.stdout, "NoNewPrivs"), "1");
}

/// The child sees NONO_* variables, runs in `<cgroup2>/nono/<id>` (checked from
/// the host while it runs) inside a new cgroup namespace; the cgroup and pin
/// directory exist while it runs and are gone after.
#[test]
fn child_environment_cgroup_and_cgroupns() {
    sys::require_prereqs();
    let tmp = TempDir::new("childenv");
    let go = tmp.path("go");
    let stdout = tmp.path("stdout");
    let script = format!(
        r#"
        echo "ID=$NONO_SANDBOX_ID"
        echo "CG=$NONO_CGROUP"
        echo "PIN=$NONO_BPF_PIN_DIR"
        echo "NS=$(readlink /proc/self/ns/cgroup)"
        echo "PROCCG=$(grep '^0::' /proc/self/cgroup)"
        echo "SELF=$$"
        n=0; while [ ! -e {go} ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done
        "#,
        go = go.display()
    );
    let mut child = std::process::Command::new(sys::agent_bin())
        .args(["exec", "--enforcer", ENFORCER, "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let read = || fs::read_to_string(&stdout).unwrap_or_default();
    let started = sys::wait_until(Duration::from_secs(10), || read().contains("SELF="));
    let text = read();
    let kv: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |k: &str| kv.get(k).cloned().unwrap_or_default();
    let cg = PathBuf::from(get("CG"));
    let pin = PathBuf::from(get("PIN"));
    let procs = fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
    let pin_exists = pin.is_dir();
    fs::write(&go, "").unwrap();
    let st = sys::wait_child(&mut child, Duration::from_secs(30), "agent");
    assert!(started, "child never printed its info: {text}");
    assert!(st.success(), "agent: {st:?}\n{text}");
    let id = get("ID");
    assert!(!id.is_empty(), "NONO_SANDBOX_ID empty: {text}");
    let cg2 = sys::cgroup2_mount().unwrap();
    assert_eq!(
        cg,
        cg2.join("nono").join(&id),
        "NONO_CGROUP must be <cgroup2>/nono/<id>"
    );
    assert!(
        procs.split_whitespace().any(|p| p == get("SELF")),
        "child's pid {} not in {}/cgroup.procs ({procs:?})",
        get("SELF"),
        cg.display()
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
    let own_ns = fs::read_link("/proc/self/ns/cgroup").unwrap();
    assert_ne!(
        get("NS"),
        own_ns.to_string_lossy(),
        "child must be in a new cgroup namespace"
    );
    assert_eq!(
        get("PROCCG"),
        "0::/",
        "cgroupns root should be the sandbox cgroup"
    );
    assert!(!cg.exists(), "cgroup left after exit");
    assert!(!pin.exists(), "pin dir left after exit");
}

// ---------------------------------------------------------------------------
// Events and summary

fn read_events(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("events file {} not readable: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("malformed event line {l:?}: {e}"))
        })
        .collect()
}

/// Runs `sh -c script` in a sandbox in the client netns (sandbox prints probe lines).
fn sandbox_script(h: &Harness, opts: &ExecOpts, script: &str) -> (Vec<ProbeResult>, CmdOutput) {
    let out = h.agent_exec(opts, &["sh", "-c", script]);
    (ProbeResult::parse_all(&out.stdout), out)
}

#[test]
fn events_file_has_well_formed_denials() {
    let h = Harness::new(PROBE);
    let tmp = TempDir::new("events");
    let events = tmp.path("events.jsonl");
    let port = h.fx.port();
    let port6 = h.fx.port();
    h.oracle.listen_tcp(port);
    h.oracle.listen_tcp(port6);
    let opts = ExecOpts {
        enforcer: Some(ENFORCER.into()),
        proxy_endpoints: vec![h.proxy_endpoint()],
        events: Some(events.clone()),
        in_client_netns: true,
        ..Default::default()
    };
    let p = h.probe_path();
    let script = format!(
        "{p} tcp4 --target {SERVER_V4} --port {port}; \
         {p} tcp-v4mapped --target {SERVER_V4} --port {port6}; \
         {p} ping-socket --target {SERVER_V4} --id 4242"
    );
    let (rs, out) = sandbox_script(&h, &opts, &script);
    let mut guard = SandboxGuard::new();
    rs.iter().for_each(|r| guard.track(r));
    assert_eq!(rs.len(), 3, "3 probe results expected\n{}", out.describe());
    assert!(rs.iter().all(ProbeResult::denied), "all denied: {rs:#?}");
    let sandbox = rs[0].sandbox.clone().expect("sandbox id");
    let evs = read_events(&events);
    assert!(!evs.is_empty(), "no events written\n{}", out.describe());
    for e in &evs {
        for key in [
            "ts",
            "sandbox",
            "source",
            "hook",
            "verdict",
            "reason",
            "pid",
            "tgid",
            "comm",
            "cgroup_id",
            "family",
            "sock_type",
            "protocol",
        ] {
            assert!(e.get(key).is_some(), "event lacks {key:?}: {e}");
        }
        // A sock_create denial has no destination: addr/port may be absent or null.
        if e["hook"] != "sock_create" {
            assert!(e["port"].is_number(), "port must be a number: {e}");
            assert!(e["addr"].is_string(), "addr must be a string: {e}");
        }
        assert_eq!(e["sandbox"], sandbox.as_str(), "{e}");
        assert_eq!(e["source"], "bpf", "{e}");
        assert_eq!(e["verdict"], "deny", "{e}");
    }
    let find = |hook: &str, pid: i32| {
        evs.iter()
            .find(|e| e["hook"] == hook && e["tgid"].as_i64() == Some(pid as i64))
            .unwrap_or_else(|| panic!("no {hook} event for pid {pid} in {evs:#?}"))
    };
    let c4 = find("connect4", rs[0].pid.unwrap());
    assert_eq!(c4["addr"], SERVER_V4.to_string(), "{c4}");
    assert_eq!(c4["port"], port, "{c4}");
    assert_eq!(c4["family"], "inet", "{c4}");
    assert_eq!(c4["comm"], "nono-probe", "{c4}");
    assert_eq!(
        c4["pid"], c4["tgid"],
        "single-threaded probe: pid == tgid {c4}"
    );
    let c6 = find("connect6", rs[1].pid.unwrap());
    assert_eq!(
        c6["addr"],
        SERVER_V4.to_string(),
        "v4-mapped destination must be shown as dotted quad: {c6}"
    );
    assert_eq!(c6["port"], port6, "{c6}");
    assert_eq!(c6["family"], "inet6", "{c6}");
    let sc = find("sock_create", rs[2].pid.unwrap());
    assert_eq!(sc["family"], "inet", "{sc}");
    assert!(
        sc["sock_type"] == libc::SOCK_DGRAM || sc["sock_type"] == "dgram",
        "sock_type should be SOCK_DGRAM (2 or \"dgram\"): {sc}"
    );
    assert_eq!(sc["protocol"], libc::IPPROTO_ICMP, "{sc}");
}

#[test]
fn summary_line_counts_denials() {
    let h = Harness::new(PROBE);
    let port = h.fx.port();
    let opts = ExecOpts {
        enforcer: Some(ENFORCER.into()),
        proxy_endpoints: vec![h.proxy_endpoint()],
        in_client_netns: true,
        ..Default::default()
    };
    let p = h.probe_path();
    let script = format!(
        "{p} tcp4 --target {SERVER_V4} --port {port}; \
         {p} tcp4 --target {SERVER_V4} --port {port}; \
         {p} ping-socket --target {SERVER_V4} --id 4243"
    );
    let (rs, out) = sandbox_script(&h, &opts, &script);
    let mut guard = SandboxGuard::new();
    rs.iter().for_each(|r| guard.track(r));
    assert_eq!(rs.len(), 3, "{}", out.describe());
    let sandbox = rs[0].sandbox.clone().expect("sandbox id");
    let (total, hooks) = parse_summary(&out.stderr, &sandbox).unwrap_or_else(|| {
        panic!(
            "no summary line `nono-agent: sandbox {sandbox}: N denied (...)` on stderr:\n{}",
            out.stderr
        )
    });
    assert_eq!(total, 3, "stderr: {}", out.stderr);
    let hooks: HashMap<String, u64> = hooks.into_iter().collect();
    assert_eq!(hooks.get("connect4"), Some(&2), "stderr: {}", out.stderr);
    assert_eq!(hooks.get("sock_create"), Some(&1), "stderr: {}", out.stderr);

    // Nothing denied -> "0 denied".
    let out = h.agent_exec(&opts, &["sh", "-c", "echo $NONO_SANDBOX_ID"]);
    let id = out.stdout.trim();
    let (total, _) = parse_summary(&out.stderr, id)
        .unwrap_or_else(|| panic!("no summary line for {id}: {}", out.stderr));
    assert_eq!(total, 0, "stderr: {}", out.stderr);

    // --quiet -> no summary line.
    let quiet = ExecOpts {
        quiet: true,
        ..opts.clone()
    };
    let out = h.agent_exec(
        &quiet,
        &[p, "tcp4", "--target", "198.51.100.2", "--port", "9"],
    );
    assert!(
        !out.stderr.contains("nono-agent: sandbox"),
        "--quiet must suppress the summary: {}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// Concurrency

/// Four sandboxes at once, each with its own proxy endpoint: each reaches only
/// its own endpoint.
#[test]
fn concurrent_sandboxes_have_separate_policies() {
    let h = Harness::new(PROBE);
    let tmp = TempDir::new("concurrent");
    let eps: Vec<_> = (0..4).map(|_| h.proxy_endpoint()).collect();
    let go = tmp.path("go");
    let p = h.probe_path();
    let mut children: Vec<(Child, PathBuf, PathBuf)> = Vec::new();
    for (i, ep) in eps.iter().enumerate() {
        let ready = tmp.path(&format!("ready{i}"));
        let probes: Vec<String> = eps
            .iter()
            .map(|e| format!("{p} proxy --proxy-endpoint {e}"))
            .collect();
        let script = format!(
            "touch {ready}; n=0; while [ ! -e {go} ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); \
             done; {}",
            probes.join("; "),
            ready = ready.display(),
            go = go.display()
        );
        let opts = ExecOpts {
            enforcer: Some(ENFORCER.into()),
            proxy_endpoints: vec![*ep],
            in_client_netns: true,
            ..Default::default()
        };
        let stdout = tmp.path(&format!("out{i}"));
        let stderr = tmp.path(&format!("err{i}"));
        let child = h
            .agent_command(&opts)
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn agent");
        children.push((child, stdout, stderr));
    }
    // Kill our own children on panic.
    struct Kill(Vec<u32>);
    impl Drop for Kill {
        fn drop(&mut self) {
            self.0.iter().for_each(|&p| sys::kill_pid(p as i32));
        }
    }
    let _kill = Kill(children.iter().map(|c| c.0.id()).collect());
    let all_ready = sys::wait_until(Duration::from_secs(20), || {
        (0..4).all(|i| tmp.path(&format!("ready{i}")).exists())
    });
    assert!(all_ready, "not all 4 sandboxes started");
    fs::write(&go, "").unwrap();
    let mut guard = SandboxGuard::new();
    for (i, (mut child, stdout, stderr)) in children.into_iter().enumerate() {
        let st = sys::wait_child(&mut child, Duration::from_secs(60), "agent");
        let so = fs::read_to_string(&stdout).unwrap_or_default();
        let se = fs::read_to_string(&stderr).unwrap_or_default();
        let rs = ProbeResult::parse_all(&so);
        rs.iter().for_each(|r| guard.track(r));
        assert!(st.success(), "sandbox {i}: {st:?}\n{so}\n{se}");
        assert_eq!(
            rs.len(),
            4,
            "sandbox {i}: 4 probe lines expected:\n{so}\n{se}"
        );
        for (j, r) in rs.iter().enumerate() {
            if i == j {
                assert!(
                    r.ok,
                    "sandbox {i} could not reach its own endpoint {}: {}",
                    eps[j], r.raw
                );
            } else {
                assert!(
                    r.denied(),
                    "sandbox {i} (allowed {}) reached/was not denied {}: {}",
                    eps[i],
                    eps[j],
                    r.raw
                );
            }
        }
    }
    h.oracle.settle();
    for ep in &eps {
        assert_eq!(
            h.oracle.tcp_connections(ep.port()),
            1,
            "endpoint {ep} must be reached exactly once (by its own sandbox); peers {:?}",
            h.oracle.tcp_peers(ep.port())
        );
    }
}
