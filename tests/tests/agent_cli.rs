//! `nono-agent exec` behaviour under every enforcement (`bpf` and `seccomp`
//! as root, `seccomp` unprivileged): exit codes, events file, summary line,
//! confinement of the child (caps, no_new_privs, seccomp, pid/cgroup
//! namespaces, cgroup), concurrency.
//!
//! Tests are grouped by enforcement (`bpf::`, `seccomp::`, `seccomp_user::`).
//! Needs root and a real kernel. Run with `cargo test -p nono-tests --test agent_cli`.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use nono_tests::netns::SERVER_V4;
use nono_tests::per_enforcement;
use nono_tests::runner::{
    exec_command, parse_summary, Enforcement, ExecOpts, Harness, ProbeResult, SandboxGuard,
};
use nono_tests::sys::{self, CmdOutput, TempDir};

const PROBE: &str = env!("CARGO_BIN_EXE_nono-probe");

per_enforcement!(
    bpf,
    super::Enforcement::Bpf,
    [
        exit_code_is_propagated,
        exit_code_for_signal_is_128_plus_n,
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

// ---------------------------------------------------------------------------
// Exit codes

fn exit_code_is_propagated(e: Enforcement) {
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

fn exit_code_for_signal_is_128_plus_n(e: Enforcement) {
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

fn exit_code_missing_command_is_127(e: Enforcement) {
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

fn exit_code_not_executable_is_126(e: Enforcement) {
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

// ---------------------------------------------------------------------------
// Child confinement

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status:\n{status}"))
}

/// No capability in any set, no_new_privs, and a seccomp filter (mode 2:
/// the notification filter under seccomp, the hardening filter under bpf).
fn child_has_no_capabilities_no_new_privs_and_a_filter(e: Enforcement) {
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
fn child_environment_and_namespaces(e: Enforcement) {
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
    if e.privileged() {
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
        assert_eq!(
            host_nspid,
            vec![self_pid],
            "unprivileged: no pid namespace, $$ is the host pid: {ctx}"
        );
        assert_eq!(get("PIDNS"), own_pidns.to_string_lossy(), "{ctx}");
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

/// Three denials (tcp4, v4-mapped tcp6, ping socket), each to its own port
/// or with its own protocol, so events are matched by destination (event
/// pids are host pids, the probe's are namespace pids under a privileged
/// agent).
fn events_file_has_well_formed_denials(e: Enforcement) {
    let h = Harness::new(PROBE);
    let tmp = TempDir::new("events");
    let opts = ExecOpts {
        events: Some(tmp.path("events.jsonl")),
        ..h.opts(e)
    };
    if let Some(u) = opts.user {
        tmp.chown(u.uid, u.gid);
    }
    let events = tmp.path("events.jsonl");
    let port = h.fx.port();
    let port6 = h.fx.port();
    h.oracle.listen_tcp(port);
    h.oracle.listen_tcp(port6);
    let p = h.probe_for(&opts).display().to_string();
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
    for ev in &evs {
        // sock_type/protocol: bpf events always carry them; seccomp connect
        // events only name the destination.
        let mut keys = vec![
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
        ];
        if e == Enforcement::Bpf {
            keys.extend(["sock_type", "protocol"]);
        }
        for key in keys {
            assert!(
                ev.get(key).is_some(),
                "{}: event lacks {key:?}: {ev}",
                e.label()
            );
        }
        // A socket-creation denial has no destination.
        if ev["hook"] != e.socket_hook() {
            assert!(ev["port"].is_number(), "port must be a number: {ev}");
            assert!(ev["addr"].is_string(), "addr must be a string: {ev}");
        }
        assert!(
            ev["pid"].as_u64().is_some_and(|p| p > 0) && ev["tgid"].as_u64().is_some_and(|p| p > 0),
            "pid/tgid must be positive (host) pids: {ev}"
        );
        assert_eq!(ev["sandbox"], sandbox.as_str(), "{ev}");
        assert_eq!(ev["source"], e.flag(), "{ev}");
        assert_eq!(ev["verdict"], "deny", "{ev}");
    }
    let find = |hook: &str, pred: &dyn Fn(&Value) -> bool, what: &str| {
        evs.iter()
            .find(|ev| ev["hook"] == hook && pred(ev))
            .unwrap_or_else(|| panic!("{}: no {hook} event for {what} in {evs:#?}", e.label()))
    };
    let c4 = find(
        e.connect_hook(false),
        &|ev| ev["port"] == port,
        &format!("port {port}"),
    );
    assert_eq!(c4["addr"], SERVER_V4.to_string(), "{c4}");
    assert_eq!(c4["family"], "inet", "{c4}");
    assert_eq!(c4["comm"], "nono-probe", "{c4}");
    assert_eq!(
        c4["pid"], c4["tgid"],
        "single-threaded probe: pid == tgid {c4}"
    );
    let c6 = find(
        e.connect_hook(true),
        &|ev| ev["port"] == port6,
        &format!("port {port6}"),
    );
    assert_eq!(
        c6["addr"],
        SERVER_V4.to_string(),
        "v4-mapped destination must be shown as dotted quad: {c6}"
    );
    assert_eq!(c6["family"], "inet6", "{c6}");
    assert_eq!(c6["comm"], "nono-probe", "{c6}");
    assert_ne!(c4["pid"], c6["pid"], "two probe processes: {c4} {c6}");
    let sc = find(
        e.socket_hook(),
        &|ev| ev["protocol"] == libc::IPPROTO_ICMP,
        "protocol ICMP",
    );
    assert_eq!(sc["family"], "inet", "{sc}");
    assert_eq!(sc["comm"], "nono-probe", "{sc}");
    assert!(
        sc["sock_type"] == libc::SOCK_DGRAM || sc["sock_type"] == "dgram",
        "sock_type should be SOCK_DGRAM (2 or \"dgram\"): {sc}"
    );
}

fn summary_line_counts_denials(e: Enforcement) {
    let h = Harness::new(PROBE);
    let port = h.fx.port();
    let opts = h.opts(e);
    let p = h.probe_for(&opts).display().to_string();
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
    assert_eq!(total, 3, "{}: stderr: {}", e.label(), out.stderr);
    let hooks: HashMap<String, u64> = hooks.into_iter().collect();
    assert_eq!(
        hooks.get(e.connect_hook(false)),
        Some(&2),
        "{}: stderr: {}",
        e.label(),
        out.stderr
    );
    assert_eq!(
        hooks.get(e.socket_hook()),
        Some(&1),
        "{}: stderr: {}",
        e.label(),
        out.stderr
    );

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
        &[&p, "tcp4", "--target", "198.51.100.2", "--port", "9"],
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
fn concurrent_sandboxes_have_separate_policies(e: Enforcement) {
    let h = Harness::new(PROBE);
    let tmp = TempDir::new("concurrent");
    // Every sandbox (each its own unprivileged uid, if any) writes here.
    fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o1777)).unwrap();
    let eps: Vec<_> = (0..4).map(|_| h.proxy_endpoint()).collect();
    let go = tmp.path("go");
    let mut children: Vec<(Child, PathBuf, PathBuf)> = Vec::new();
    let mut guard = SandboxGuard::new();
    for (i, ep) in eps.iter().enumerate() {
        let opts = ExecOpts {
            proxy_endpoints: vec![*ep],
            ..ExecOpts::for_enforcement(e)
        };
        if let Some(u) = opts.user {
            guard.track_uid(u.uid);
        }
        let p = h.probe_for(&opts).display().to_string();
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
        guard.pids.push(child.id() as i32);
        children.push((child, stdout, stderr));
    }
    let all_ready = sys::wait_until(Duration::from_secs(20), || {
        (0..4).all(|i| tmp.path(&format!("ready{i}")).exists())
    });
    assert!(all_ready, "{}: not all 4 sandboxes started", e.label());
    fs::write(&go, "").unwrap();
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
                    "{}: sandbox {i} could not reach its own endpoint {}: {}",
                    e.label(),
                    eps[j],
                    r.raw
                );
            } else {
                assert!(
                    r.denied(),
                    "{}: sandbox {i} (allowed {}) reached/was not denied {}: {}",
                    e.label(),
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
            "{}: endpoint {ep} must be reached exactly once (by its own sandbox); peers {:?}",
            e.label(),
            h.oracle.tcp_peers(ep.port())
        );
    }
}
