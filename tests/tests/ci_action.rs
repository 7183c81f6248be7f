//! The CI action's shell steps (`action.yml` → `dist/ci/*.sh`), run here
//! without GitHub: install (daemon up), run (the command confined through
//! the daemon as an unprivileged user, its exit status kept), summary
//! (denials as a Markdown table and a `denied=N` output).

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

use nono_tests::daemon::Daemon;
use nono_tests::netns::{self, NetFixture};
use nono_tests::sys;

fn script(name: &str) -> std::path::PathBuf {
    sys::workspace_root().join("dist/ci").join(name)
}

#[test]
fn the_action_names_only_steps_that_exist() {
    let yml = std::fs::read_to_string(sys::workspace_root().join("action.yml")).unwrap();
    for s in ["install.sh", "run.sh", "summary.sh"] {
        assert!(
            yml.contains(&format!("$GITHUB_ACTION_PATH/dist/ci/{s}")),
            "{s}"
        );
        let mode = std::fs::metadata(script(s)).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{s} is not executable");
    }
    for input in [
        "run:",
        "profile:",
        "allow-domains:",
        "package:",
        "events-file:",
    ] {
        assert!(yml.contains(input), "input {input}");
    }
}

/// run.sh turns the inputs into exactly these arguments (a stand-in
/// binary prints what it got).
#[test]
fn run_step_passes_profile_domains_and_events() {
    let dir = sys::TempDir::new("ci-action-args");
    let fake = dir.path("nono-agent");
    std::fs::write(
        &fake,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(script("run.sh"))
        .env("NONO_AGENT_BIN", &fake)
        .env("NONO_RUN", "make test")
        .env("NONO_PROFILE", "ci-rust")
        .env(
            "NONO_ALLOW_DOMAINS",
            " a.example , b.example\n  *.c.example \n\n",
        )
        .env("NONO_EVENTS", "ev.jsonl")
        .env_remove("NONO_AGENT_DAEMON_SOCKET")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let args: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        args,
        [
            "exec",
            "--events",
            "ev.jsonl",
            "--profile",
            "ci-rust",
            "--allow-domain",
            "a.example",
            "--allow-domain",
            "b.example",
            "--allow-domain",
            "*.c.example",
            "--",
            "bash",
            "-c",
            "make test"
        ]
    );
}

/// The whole action against a real daemon: the install step finds it
/// answering; the command runs as an unprivileged user through it, its
/// connection to a test host is refused (the host sees nothing, though it
/// is reachable outside), loopback works, its exit status is the step's;
/// the summary lists the denial and outputs its count.
#[test]
fn the_steps_confine_the_command_and_summarise_the_denials() {
    let d = Daemon::start();
    let agent = sys::accessible(&sys::agent_bin());
    // With the selftest input: the runner is checked before the command.
    let install = Command::new(script("install.sh"))
        .env("NONO_AGENT_BIN", &agent)
        .env("NONO_AGENT_DAEMON_SOCKET", &d.socket)
        .env("NONO_SELFTEST", "true")
        .env_remove("NONO_PACKAGE")
        .output()
        .unwrap();
    let install_err = String::from_utf8_lossy(&install.stderr);
    assert!(
        install.status.success()
            && install_err.contains("answers")
            && install_err.contains("selftest"),
        "{install:?}"
    );
    assert!(
        String::from_utf8_lossy(&install.stdout).contains("daemon"),
        "selftest's table names the daemon enforcer: {install:?}"
    );

    let fx = NetFixture::new();
    let port = fx.port();
    let server = netns::in_netns(&fx.server.clone(), move || {
        TcpListener::bind(("198.51.100.2", port)).unwrap()
    });
    let o = fx.run_in_client(&[
        "bash",
        "-c",
        &format!("echo hi > /dev/tcp/198.51.100.2/{port}"),
    ]);
    assert_eq!(
        o.code(),
        0,
        "the test host must be reachable outside: {}",
        o.describe()
    );
    server.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.accept().is_ok());

    let dir = sys::TempDir::new("ci-action");
    dir.chown(65534, 65534);
    let events = dir.path("events.jsonl");
    let lo = netns::in_netns(&fx.client.clone(), || {
        TcpListener::bind("127.0.0.1:0").unwrap()
    });
    let lport = lo.local_addr().unwrap().port();
    let run = format!(
        "(echo x > /dev/tcp/198.51.100.2/{port}) 2>/dev/null && echo REMOTE_OK || echo REMOTE_DENIED; \
         (echo y > /dev/tcp/127.0.0.1/{lport}) 2>/dev/null && echo LO_OK || echo LO_DENIED; exit 3"
    );
    // A copy the unprivileged user can read wherever the checkout is.
    let run_sh = dir.path("run.sh");
    std::fs::copy(script("run.sh"), &run_sh).unwrap();
    std::fs::set_permissions(&run_sh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = fx
        .client_command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&run_sh)
        .current_dir(&dir.0)
        .env("NONO_AGENT_BIN", &agent)
        .env("NONO_AGENT_DAEMON_SOCKET", &d.socket)
        .env("NONO_RUN", &run)
        .env("NONO_PROFILE", "")
        .env("NONO_ALLOW_DOMAINS", "")
        .env("NONO_EVENTS", &events)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the command's status: {stdout}\n{stderr}"
    );
    assert!(stderr.contains("bpf (daemon)"), "{stderr}");
    assert!(
        stdout.contains("REMOTE_DENIED") && stdout.contains("LO_OK"),
        "{stdout}\n{stderr}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.accept().is_err(),
        "the test host saw a connection from the sandbox"
    );

    let summary = dir.path("summary.md");
    let gh_out = dir.path("output");
    let s = Command::new(script("summary.sh"))
        .env("NONO_EVENTS", &events)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env("GITHUB_OUTPUT", &gh_out)
        .output()
        .unwrap();
    assert!(s.status.success(), "{s:?}");
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.contains("| connect4 | not-allowed |"), "{md}");
    assert!(md.contains(&format!("`198.51.100.2:{port}`")), "{md}");
    let n = std::fs::read_to_string(&gh_out).unwrap();
    assert!(
        n.trim_end().starts_with("denied=") && n.trim() != "denied=0",
        "{n}"
    );
}

/// No events file (the command never ran): the summary says so, denied=0.
#[test]
fn the_summary_of_nothing_is_zero() {
    let dir = sys::TempDir::new("ci-action-empty");
    let gh_out = dir.path("output");
    let s = Command::new(script("summary.sh"))
        .env("NONO_EVENTS", dir.path("missing.jsonl"))
        .env("GITHUB_STEP_SUMMARY", dir.path("s.md"))
        .env("GITHUB_OUTPUT", &gh_out)
        .output()
        .unwrap();
    assert!(s.status.success(), "{s:?}");
    assert_eq!(
        std::fs::read_to_string(&gh_out).unwrap(),
        "denied=0\nwould-deny=0\n"
    );
    assert!(std::fs::read_to_string(dir.path("s.md"))
        .unwrap()
        .contains("No connection was refused"));
}

/// A stand-in `nono-agent` (shell) that answers `doctor` and fails or
/// passes `selftest` as told, and prints other commands' arguments.
fn fake_agent(dir: &sys::TempDir, selftest_status: i32) -> std::path::PathBuf {
    let fake = dir.path("nono-agent");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  doctor) echo '{{\"answers\": true}}' ;;\n  selftest) echo selftest-ran; exit {selftest_status} ;;\n  *) for a in \"$@\"; do printf '%s\\n' \"$a\"; done ;;\nesac\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    fake
}

/// The selftest input: a runner whose selftest fails stops the job at the
/// install step; without the input, selftest is not run.
#[test]
fn install_step_fails_the_job_when_selftest_fails() {
    let dir = sys::TempDir::new("ci-action-selftest");
    for (status, want_ok) in [(1, false), (0, true)] {
        let fake = fake_agent(&dir, status);
        let out = Command::new(script("install.sh"))
            .env("NONO_AGENT_BIN", &fake)
            .env("NONO_AGENT_DAEMON_SOCKET", dir.path("d.sock"))
            .env("NONO_SELFTEST", "true")
            .env_remove("NONO_PACKAGE")
            .output()
            .unwrap();
        assert_eq!(out.status.success(), want_ok, "selftest {status}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("selftest-ran"));
        if !want_ok {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("does not confine"),
                "{out:?}"
            );
        }
    }
    let fake = fake_agent(&dir, 1);
    let out = Command::new(script("install.sh"))
        .env("NONO_AGENT_BIN", &fake)
        .env("NONO_AGENT_DAEMON_SOCKET", dir.path("d.sock"))
        .env_remove("NONO_SELFTEST")
        .env_remove("NONO_PACKAGE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("selftest-ran"));
}

/// The audit input adds --audit; anything but true/false is refused.
#[test]
fn run_step_passes_audit() {
    let dir = sys::TempDir::new("ci-action-audit");
    let fake = fake_agent(&dir, 0);
    let run = |audit: &str| {
        Command::new(script("run.sh"))
            .env("NONO_AGENT_BIN", &fake)
            .env("NONO_RUN", "true")
            .env("NONO_PROFILE", "")
            .env("NONO_ALLOW_DOMAINS", "")
            .env("NONO_AUDIT", audit)
            .env_remove("NONO_AGENT_DAEMON_SOCKET")
            .output()
            .unwrap()
    };
    let on = run("true");
    assert!(on.status.success(), "{on:?}");
    assert!(String::from_utf8_lossy(&on.stdout)
        .lines()
        .any(|l| l == "--audit"));
    let off = run("false");
    assert!(!String::from_utf8_lossy(&off.stdout)
        .lines()
        .any(|l| l == "--audit"));
    let bad = run("yes");
    assert_eq!(bad.status.code(), Some(125), "{bad:?}");
}

/// Audit records get their own section and output; what the command put
/// in a destination (backticks, pipes, line breaks) cannot break out of
/// the table's code span.
#[test]
fn the_summary_lists_what_audit_would_have_denied() {
    let dir = sys::TempDir::new("ci-action-would");
    let events = dir.path("ev.jsonl");
    let lines = [
        r#"{"verdict":"deny","source":"bpf","hook":"connect4","reason":"not-allowed","addr":"203.0.113.9","port":443}"#,
        r#"{"verdict":"would-deny","source":"proxy","hook":"connect","reason":"not in allowlist","host":"api.example.com","port":443}"#,
        r#"{"verdict":"would-deny","source":"proxy","hook":"connect","reason":"x|y","host":"a`b|c\nd.example","port":443}"#,
        r#"{"verdict":"allow","source":"proxy","hook":"connect","host":"ok.example","port":443}"#,
    ];
    std::fs::write(&events, lines.join("\n")).unwrap();
    let summary = dir.path("s.md");
    let gh_out = dir.path("out");
    let s = Command::new(script("summary.sh"))
        .env("NONO_EVENTS", &events)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env("GITHUB_OUTPUT", &gh_out)
        .output()
        .unwrap();
    assert!(s.status.success(), "{s:?}");
    assert_eq!(
        std::fs::read_to_string(&gh_out).unwrap(),
        "denied=1\nwould-deny=2\n"
    );
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.contains("would have been denied (audit mode)"), "{md}");
    assert!(md.contains("`api.example.com:443`"), "{md}");
    assert!(md.contains("`a?b?c?d.example:443`"), "{md}");
    assert!(!md.contains("ok.example"), "{md}");
    for row in md.lines().filter(|l| l.starts_with("| ")) {
        assert_eq!(
            row.matches('|').count(),
            6,
            "a row with a broken cell: {row}"
        );
    }
}
