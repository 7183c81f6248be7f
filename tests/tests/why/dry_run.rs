//! `exec --dry-run`: prints the plan, creates nothing, runs nothing.
//!
//! What it does not do is checked where it would show: under strace (no
//! `bpf()`, no `mkdir`, no `mount`, no process made — only threads — and no
//! program executed but the agent), no marker written by the command, no
//! events file, and no new sandbox cgroup or pin directory of its own.

use std::process::Command;

use nono_tests::sys::{self, TempDir};

#[test]
fn dry_run_prints_the_plan_and_creates_nothing() {
    sys::require_prereqs();
    let strace = sys::require_tool("strace", "shows what --dry-run does");
    let tmp = TempDir::new("dry-run");
    let marker = tmp.path("ran");
    let events = tmp.path("events.jsonl");
    let trace = tmp.path("trace");
    let mut c = Command::new(&strace);
    c.args([
        "-f",
        "-qq",
        "-e",
        "trace=bpf,mkdir,mkdirat,mount,clone,clone3,fork,vfork,execve",
    ])
    .arg("-o")
    .arg(&trace)
    .arg(sys::agent_bin())
    .args([
        "exec",
        "--dry-run",
        "--no-daemon",
        "--profile",
        "default",
        "--allow-domain",
        "api.example.test",
        "--loopback-port",
        "5432",
    ])
    .arg("--events")
    .arg(&events)
    .args(["--", "sh", "-c"])
    .arg(format!("touch {}", marker.display()));
    let out = sys::run_timeout(&mut c, sys::CMD_TIMEOUT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    // The plan.
    for want in [
        "dry run: nothing was created and nothing was run",
        "enforcer:  bpf (root, with a cgroup2 filesystem",
        "loopback: 127.0.0.1 / ::1, ports [5432] and the sandbox proxy's [command line (--loopback-port)]",
        "allow-domain api.example.test [command line]",
        "write /tmp [builtin:default.toml:",
        "host protection (whatever the rules say):",
        "/etc (read-only)",
    ] {
        assert!(out.stdout.contains(want), "plan lacks {want:?}:\n{}", out.stdout);
    }
    // Nothing ran, nothing was created.
    assert!(!marker.exists(), "the command ran");
    assert!(!events.exists(), "the events file was created");
    let t = std::fs::read_to_string(&trace).expect("strace output");
    for line in t.lines() {
        let call = line.split_whitespace().nth(1).unwrap_or("");
        assert!(
            !call.starts_with("bpf(") && !call.starts_with("mkdir") && !call.starts_with("mount("),
            "--dry-run made a {call}: {line}"
        );
        if call.starts_with("clone") || call.starts_with("fork") || call.starts_with("vfork") {
            assert!(
                line.contains("CLONE_THREAD"),
                "--dry-run made a process: {line}"
            );
        }
    }
    assert_eq!(
        t.lines().filter(|l| l.contains("execve(")).count(),
        1,
        "only the agent itself is executed:\n{t}"
    );
    // JSON.
    let mut c = Command::new(sys::agent_bin());
    c.args([
        "exec",
        "--dry-run",
        "--json",
        "--no-daemon",
        "--allow-domain",
        "api.example.test",
        "--",
        "true",
    ]);
    let out = sys::run_timeout(&mut c, sys::CMD_TIMEOUT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON plan");
    assert_eq!(v["enforcer"], "bpf", "{v}");
    assert_eq!(v["proxy"]["allow"][0]["rule"], "api.example.test", "{v}");
    assert!(v["filesystem"].is_null(), "{v}");

    // Bad input is refused as exec refuses it (125), nothing printed as a plan.
    let mut c = Command::new(sys::agent_bin());
    c.args([
        "exec",
        "--dry-run",
        "--no-daemon",
        "--profile",
        "/nonexistent/x.toml",
        "--",
        "true",
    ]);
    let out = sys::run_timeout(&mut c, sys::CMD_TIMEOUT);
    assert_eq!(out.code(), 125, "{}", out.describe());
    assert!(!out.stdout.contains("dry run"), "{}", out.describe());
}
