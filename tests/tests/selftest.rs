//! `nono-agent selftest`: passes on this host for every enforcer (root,
//! with a private daemon), its JSON has the documented shape, nothing is
//! left behind (network namespaces, interfaces, cgroups, pins, processes),
//! an unprivileged run tests the daemon and seccomp (its test host in a
//! user namespace of its own) and says why not direct BPF, bad input is
//! refused, SIGTERM ends a run cleanly, and a deliberately broken enforcer
//! (a private daemon with one program detached) is reported as a leak.
//!
//! selftest creates its own test host (anonymous network namespaces), so
//! these tests never touch another test's fixture; each daemon is private
//! (`nono_tests::daemon::Daemon`: own name, socket, cgroup and pins).
//!
//! Needs root, cgroup BPF and a real kernel. `cargo test -p nono-tests --test selftest`.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nono_agent::selftest::vectors::NETWORK_VECTORS;
use nono_tests::daemon::Daemon;
use nono_tests::profilelab::Leftovers;
use nono_tests::runner::RunAs;
use nono_tests::sys::{self, CmdOutput};
use serde_json::Value;

/// The controls every sandbox must still reach.
const CONTROLS: [&str; 3] = ["loopback4", "loopback6", "proxy"];

fn selftest(args: &[&str]) -> (CmdOutput, Value) {
    let out = sys::run_timeout(
        Command::new(sys::agent_bin()).arg("selftest").args(args),
        Duration::from_secs(60),
    );
    let json = if args.contains(&"--json") {
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("selftest --json printed no JSON ({e}): {}", out.describe()))
    } else {
        Value::Null
    };
    (out, json)
}

/// What a run could leave on the host: named network namespaces,
/// interfaces and addresses of the host's namespace.
fn host_network() -> (BTreeSet<String>, String) {
    let ns = sys::run_ok("ip", &["netns", "list"])
        .stdout
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect();
    let links = sys::run_ok("ip", &["-o", "addr", "show"]).stdout;
    (ns, links)
}

/// Whether anything still holds namespace `id` (`net:[INODE]`): a
/// process's namespace or descriptor, or a bind mount.
fn netns_held(id: &str) -> Vec<String> {
    let mut holders = Vec::new();
    for pid in sys::all_pids() {
        if fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.to_string_lossy() == id) {
            holders.push(format!("pid {pid} lives in it"));
        }
        if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == id) {
                    holders.push(format!("pid {pid} holds it as {}", fd.path().display()));
                }
            }
        }
    }
    let ino = id.trim_start_matches("net:[").trim_end_matches(']');
    for l in fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
    {
        if l.contains(&format!("net:[{ino}]")) {
            holders.push(format!("mounted: {l}"));
        }
    }
    holders
}

/// Processes of a selftest run (their command line carries the run's tag).
fn run_processes(selftest_pid: u32) -> Vec<i32> {
    let tag = format!("NONO-SELFTEST-{selftest_pid:010}");
    sys::all_pids()
        .into_iter()
        .filter(|&p| {
            fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&tag))
                .unwrap_or(false)
                && sys::pid_alive(p)
        })
        .collect()
}

fn row<'a>(report: &'a Value, vector: &str) -> &'a Value {
    report["vectors"]
        .as_array()
        .expect("vectors array")
        .iter()
        .find(|r| r["vector"] == vector)
        .unwrap_or_else(|| panic!("no row for {vector}: {report:#}"))
}

fn cell<'a>(r: &'a Value, enforcer: &str) -> &'a Value {
    r["results"]
        .as_array()
        .expect("results array")
        .iter()
        .find(|c| c["enforcer"] == enforcer)
        .unwrap_or_else(|| panic!("no {enforcer} cell in {r:#}"))
}

/// Every key the README documents, with its type.
fn assert_documented_shape(report: &Value) {
    for (k, check) in [
        ("version", Value::is_string as fn(&Value) -> bool),
        ("outcome", Value::is_string),
        ("exit_code", Value::is_i64),
        ("duration_ms", Value::is_u64),
        ("enforcers", Value::is_array),
        ("vectors", Value::is_array),
        ("leaks", Value::is_u64),
        ("failures", Value::is_u64),
    ] {
        assert!(
            check(&report[k]),
            "selftest JSON: {k} missing or mistyped: {report:#}"
        );
    }
    assert!(report.get("error").is_some() && report.get("test_host").is_some());
    for e in report["enforcers"].as_array().expect("enforcers") {
        assert!(
            ["daemon", "bpf", "seccomp"].contains(&e["enforcer"].as_str().unwrap_or(""))
                && ["tested", "not-tried", "error"].contains(&e["status"].as_str().unwrap_or(""))
                && e["detail"].is_string(),
            "enforcer entry: {e:#}"
        );
    }
    for r in report["vectors"].as_array().expect("vectors") {
        assert!(
            r["vector"].is_string()
                && ["escape", "control"].contains(&r["kind"].as_str().unwrap_or(""))
                && ["reached", "kernel-refused", "unreachable"]
                    .contains(&r["baseline"].as_str().unwrap_or(""))
                && r["baseline_detail"].is_string(),
            "vector row: {r:#}"
        );
        for c in r["results"].as_array().expect("results") {
            assert!(
                [
                    "blocked",
                    "leak",
                    "reached",
                    "not-reached",
                    "untestable",
                    "not-run"
                ]
                .contains(&c["verdict"].as_str().unwrap_or(""))
                    && c["detail"].is_string(),
                "result cell: {c:#}"
            );
        }
    }
}

#[test]
fn passes_for_every_enforcer_and_leaves_nothing_behind() {
    sys::require_prereqs();
    let d = Daemon::start();
    let (ns_before, addrs_before) = host_network();
    let left = Leftovers::snapshot();
    let socket = d.socket.to_str().expect("utf-8 socket path");
    let (out, report) = selftest(&["--json", "--daemon-socket", socket]);
    eprintln!(
        "selftest took {} ms (whole command), exit {}",
        report["duration_ms"],
        out.code()
    );
    assert_documented_shape(&report);
    assert_eq!(
        (out.code(), report["outcome"].as_str()),
        (0, Some("pass")),
        "selftest should pass on this host: {}\n{report:#}",
        out.describe()
    );
    for e in report["enforcers"].as_array().expect("enforcers") {
        assert_eq!(
            e["status"], "tested",
            "every enforcer is tested as root: {e:#}"
        );
    }
    // One list: the rows are the library's network vectors, then the
    // controls, in order.
    let names: Vec<&str> = report["vectors"]
        .as_array()
        .expect("vectors")
        .iter()
        .map(|r| r["vector"].as_str().expect("name"))
        .collect();
    let want: Vec<&str> = NETWORK_VECTORS
        .iter()
        .map(|v| v.name)
        .chain(CONTROLS)
        .collect();
    assert_eq!(names, want);
    for v in NETWORK_VECTORS {
        let r = row(&report, v.name);
        assert_ne!(
            r["baseline"], "unreachable",
            "{}: the baseline must reach the test host here, or the run proves nothing: {r:#}",
            v.name
        );
        for e in ["daemon", "bpf", "seccomp"] {
            assert_eq!(
                cell(r, e)["verdict"],
                "blocked",
                "{} under {e}: {r:#}",
                v.name
            );
        }
    }
    for c in CONTROLS {
        let r = row(&report, c);
        for e in ["daemon", "bpf", "seccomp"] {
            assert_eq!(cell(r, e)["verdict"], "reached", "{c} under {e}: {r:#}");
        }
    }
    // Nothing left: the namespaces are unreferenced, no interface, address
    // or named namespace of the run in the host, no process, no sandbox
    // cgroup, pin or lock, nothing in the daemon.
    let host = &report["test_host"];
    for k in ["client_netns", "server_netns"] {
        let id = host[k].as_str().expect("netns id");
        assert!(id.starts_with("net:["), "{k}: {id}");
        let held = sys::wait_until(Duration::from_secs(5), || netns_held(id).is_empty());
        assert!(held, "{k} {id} still held: {:?}", netns_held(id));
    }
    let (ns_after, addrs_after) = host_network();
    let new_ns: Vec<&String> = ns_after
        .difference(&ns_before)
        .filter(|n| !n.starts_with("nono-t"))
        .collect();
    assert!(new_ns.is_empty(), "named namespaces appeared: {new_ns:?}");
    for k in ["client_v4", "server_v4", "client_v6", "server_v6"] {
        let a = host[k].as_str().expect("address");
        assert!(
            !addrs_after.contains(a) || addrs_before.contains(a),
            "{a} appeared in the host's namespace:\n{addrs_after}"
        );
    }
    assert!(
        !addrs_after.contains(": nst"),
        "a selftest interface is in the host's namespace:\n{addrs_after}"
    );
    assert_eq!(run_processes(std::process::id()), Vec::<i32>::new());
    left.assert_none("selftest");
    // An ended sandbox's cgroup goes just after its client was answered.
    sys::wait_until(Duration::from_secs(5), || d.sandbox_cgroups().is_empty());
    assert_eq!(
        d.sandbox_cgroups(),
        Vec::<String>::new(),
        "daemon sandboxes left"
    );
    assert_eq!(d.status(), (0, 0), "daemon sandboxes / policy entries left");
}

#[test]
fn unprivileged_run_tests_what_it_can_and_says_what_not() {
    sys::require_prereqs();
    let setpriv = sys::require_tool("setpriv", "runs selftest unprivileged");
    let d = Daemon::start();
    let who = RunAs::fresh();
    let bin = sys::accessible(&sys::agent_bin());
    let run = |json: bool| {
        let mut cmd = Command::new(&setpriv);
        cmd.args(who.setpriv_args())
            .arg(&bin)
            .arg("selftest")
            .args(json.then_some("--json"))
            .arg("--daemon-socket")
            .arg(&d.socket);
        sys::run_timeout(&mut cmd, Duration::from_secs(60))
    };
    let out = run(true);
    let report: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", out.describe()));
    assert_documented_shape(&report);
    // It builds its test host in a user namespace of its own and tests what
    // a user gets: the daemon and seccomp; direct BPF is not tried, and why.
    assert_eq!(
        (out.code(), report["outcome"].as_str()),
        (0, Some("pass")),
        "{}\n{report:#}",
        out.describe()
    );
    let status = |e: &str| {
        report["enforcers"]
            .as_array()
            .expect("enforcers")
            .iter()
            .find(|x| x["enforcer"] == e)
            .unwrap_or_else(|| panic!("no {e} entry: {report:#}"))
            .clone()
    };
    assert_eq!(status("daemon")["status"], "tested", "{report:#}");
    assert_eq!(status("seccomp")["status"], "tested", "{report:#}");
    let bpf = status("bpf");
    assert_eq!(bpf["status"], "not-tried");
    assert!(
        bpf["detail"].as_str().unwrap_or("").contains("needs root"),
        "{bpf:#}"
    );
    for v in NETWORK_VECTORS {
        let r = row(&report, v.name);
        for e in ["daemon", "seccomp"] {
            let verdict = cell(r, e)["verdict"].as_str().unwrap_or("");
            assert!(
                verdict == "blocked" || (verdict == "untestable" && r["baseline"] == "unreachable"),
                "{} under {e} as uid {}: {r:#}",
                v.name,
                who.uid
            );
        }
        assert_eq!(cell(r, "bpf")["verdict"], "not-run", "{r:#}");
    }
    for c in CONTROLS {
        for e in ["daemon", "seccomp"] {
            assert_eq!(
                cell(row(&report, c), e)["verdict"],
                "reached",
                "{c} under {e}"
            );
        }
    }
    sys::wait_until(Duration::from_secs(5), || d.sandbox_cgroups().is_empty());
    assert_eq!(
        d.sandbox_cgroups(),
        Vec::<String>::new(),
        "daemon sandboxes left"
    );
    // The table says the same to a human.
    let out = run(false);
    assert!(
        out.code() == 0
            && out
                .stdout
                .contains("bpf      not tried: loading BPF programs needs root"),
        "{}",
        out.describe()
    );
    let left = sys::pids_of_uid(who.uid);
    assert!(
        left.is_empty(),
        "processes of uid {} left: {left:?}",
        who.uid
    );
}

#[test]
fn bad_input_and_unavailable_enforcers_are_refused() {
    sys::require_prereqs();
    let (out, _) = selftest(&["--enforcer", "nosuch"]);
    assert!(
        out.code() == 125 && out.stderr.contains("nosuch"),
        "an unknown enforcer is a usage error naming it: {}",
        out.describe()
    );
    // Asked for the daemon, none answers: selftest cannot test it (125),
    // and makes no test host for nothing.
    let (out, report) = selftest(&[
        "--json",
        "--enforcer",
        "daemon",
        "--daemon-socket",
        "/nonexistent/nono-selftest.sock",
    ]);
    assert_eq!(out.code(), 125, "{}", out.describe());
    assert_eq!(
        report["enforcers"].as_array().map(Vec::len),
        Some(1),
        "{report:#}"
    );
    assert_eq!(report["enforcers"][0]["status"], "not-tried");
    assert!(report["test_host"].is_null(), "{report:#}");
    // The probe is internal: hidden from help, and a bad plan is refused.
    let help = sys::run_ok(sys::agent_bin().to_str().expect("utf-8"), &["--help"]);
    assert!(
        help.stdout.contains("selftest") && !help.stdout.contains("__probe"),
        "{}",
        help.describe()
    );
    let out = sys::run_timeout(
        Command::new(sys::agent_bin()).args(["__probe", "--plan", "not json"]),
        sys::CMD_TIMEOUT,
    );
    assert!(
        out.code() == 125 && out.stderr.contains("--plan"),
        "{}",
        out.describe()
    );
}

#[test]
fn sigterm_ends_a_run_and_leaves_nothing() {
    sys::require_prereqs();
    let left = Leftovers::snapshot();
    let mut child = Command::new(sys::agent_bin())
        .args([
            "selftest",
            "--json",
            "--enforcer",
            "bpf,seccomp",
            "--daemon-socket",
            "/nonexistent/nono-selftest.sock",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start selftest");
    let pid = child.id();
    // Wait until its probes run (inside and outside sandboxes), then stop it.
    let running = sys::wait_until(Duration::from_secs(20), || run_processes(pid).len() >= 3);
    assert!(running, "selftest's probes never started");
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = sys::wait_child(
        &mut child,
        Duration::from_secs(30),
        "selftest after SIGTERM",
    );
    let mut stdout = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read as _;
        let _ = o.read_to_string(&mut stdout);
    }
    assert_eq!(status.code(), Some(130), "exit after SIGTERM: {stdout}");
    let report: Value = serde_json::from_str(&stdout).expect("a report after SIGTERM too");
    assert_eq!(report["error"], "interrupted", "{report:#}");
    let gone = sys::wait_until(Duration::from_secs(10), || run_processes(pid).is_empty());
    assert!(gone, "processes of the run left: {:?}", run_processes(pid));
    for k in ["client_netns", "server_netns"] {
        let id = report["test_host"][k]
            .as_str()
            .expect("netns id")
            .to_string();
        let free = sys::wait_until(Duration::from_secs(10), || netns_held(&id).is_empty());
        assert!(free, "{k} {id} still held: {:?}", netns_held(&id));
    }
    left.assert_none("selftest after SIGTERM");
}

/// Detaches the pinned BPF link at `pin` (BPF_OBJ_GET, BPF_LINK_DETACH):
/// the program stops running while every pin stays in place.
fn detach_link(pin: &Path) {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let path = CString::new(pin.to_str().expect("utf-8 pin")).expect("no NUL");
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: bpf(BPF_OBJ_GET) reads the path through attr; both outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "BPF_OBJ_GET {}: {}",
        pin.display(),
        std::io::Error::last_os_error()
    );
    let mut attr = [0u64; 16];
    attr[0] = fd as u64;
    // SAFETY: bpf(BPF_LINK_DETACH) on a link fd we hold.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the descriptor BPF_OBJ_GET gave us.
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "BPF_LINK_DETACH {}: {err}", pin.display());
}

#[test]
fn a_daemon_with_a_detached_program_is_reported_as_a_leak() {
    sys::require_prereqs();
    let d = Daemon::start();
    let socket = d.socket.to_str().expect("utf-8 socket path");
    // Intact first: the same run passes (so the failure below is the
    // detached program's doing).
    let (out, report) = selftest(&["--json", "--enforcer", "daemon", "--daemon-socket", socket]);
    assert_eq!(
        out.code(),
        0,
        "intact daemon: {}\n{report:#}",
        out.describe()
    );
    // Detach `egress`, the program that checks every packet's real
    // destination: loopback-addressed datagrams forced out of an interface
    // (IP_UNICAST_IF, IP_PKTINFO) are only caught there.
    let builds = sys::subdirs(&d.pin_dir);
    assert_eq!(
        builds.len(),
        1,
        "one build's pins in {}",
        d.pin_dir.display()
    );
    detach_link(&d.pin_dir.join(&builds[0]).join("links/egress"));
    let (out, report) = selftest(&["--json", "--enforcer", "daemon", "--daemon-socket", socket]);
    assert_eq!(
        (out.code(), report["outcome"].as_str()),
        (1, Some("leak")),
        "a daemon without its egress program must fail selftest: {}\n{report:#}",
        out.describe()
    );
    let leaked: Vec<&str> = report["vectors"]
        .as_array()
        .expect("vectors")
        .iter()
        .filter(|r| cell(r, "daemon")["verdict"] == "leak")
        .map(|r| r["vector"].as_str().expect("name"))
        .collect();
    assert!(
        leaked.contains(&"unicast-if-loopback4") && leaked.contains(&"pktinfo-loopback4"),
        "the wire-loopback vectors leak without egress: {leaked:?}\n{report:#}"
    );
    assert_eq!(report["leaks"].as_u64(), Some(leaked.len() as u64));
    let detail = cell(row(&report, "unicast-if-loopback4"), "daemon")["detail"]
        .as_str()
        .unwrap_or("");
    assert!(detail.contains("the test host received"), "{detail}");
    // The table names the leak for a human, and exits 1 too.
    let (out, _) = selftest(&["--enforcer", "daemon", "--daemon-socket", socket]);
    assert!(
        out.code() == 1
            && out
                .stdout
                .contains("LEAK unicast-if-loopback4 under daemon"),
        "{}",
        out.describe()
    );
}

#[test]
fn two_runs_at_once_both_pass() {
    sys::require_prereqs();
    // Each run has its own namespaces, names and addresses: neither sees
    // the other's traffic as a leak nor takes the other's ports.
    let start = || {
        Command::new(sys::agent_bin())
            .args([
                "selftest",
                "--json",
                "--enforcer",
                "bpf,seccomp",
                "--daemon-socket",
                "/nonexistent/nono-selftest.sock",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start selftest")
    };
    let (a, b) = (start(), start());
    let mut hosts = Vec::new();
    for c in [a, b] {
        let out = c.wait_with_output().expect("selftest output");
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(out.status.code(), Some(0), "{report:#}");
        hosts.push(report["test_host"]["client_netns"].clone());
    }
    assert_ne!(hosts[0], hosts[1], "two runs shared a namespace");
}

#[test]
fn sigkill_of_selftest_leaves_nothing() {
    sys::require_prereqs();
    let left = Leftovers::snapshot();
    let mut child = Command::new(sys::agent_bin())
        .args([
            "selftest",
            "--enforcer",
            "bpf,seccomp",
            "--daemon-socket",
            "/nonexistent/nono-selftest.sock",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start selftest");
    let pid = child.id();
    let running = sys::wait_until(Duration::from_secs(20), || run_processes(pid).len() >= 3);
    assert!(running, "selftest's probes never started");
    // No handler runs: its namespaces go with its descriptors, its children
    // get SIGTERM (parent-death signal) and end their sandboxes as usual.
    let _ = child.kill();
    let _ = child.wait();
    let gone = sys::wait_until(Duration::from_secs(20), || run_processes(pid).is_empty());
    assert!(gone, "processes of the run left: {:?}", run_processes(pid));
    left.assert_none("selftest after SIGKILL");
}
