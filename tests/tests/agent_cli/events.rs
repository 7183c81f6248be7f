//! Events (matched by destination, hook names per enforcer), the exit
//! summary, and concurrent sandboxes.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use nono_tests::netns::SERVER_V4;
use nono_tests::runner::{
    parse_summary, Enforcement, ExecOpts, Harness, ProbeResult, SandboxGuard,
};
use nono_tests::sys::{self, CmdOutput, TempDir};

use super::PROBE;

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
pub(super) fn events_file_has_well_formed_denials(e: Enforcement) {
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

pub(super) fn summary_line_counts_denials(e: Enforcement) {
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

/// Four sandboxes at once, each with its own proxy endpoint: each reaches only
/// its own endpoint.
pub(super) fn concurrent_sandboxes_have_separate_policies(e: Enforcement) {
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
