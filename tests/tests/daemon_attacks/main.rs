//! Adversarial tests of `nono-agent daemon`: hostile clients (an
//! unprivileged uid speaking the raw protocol), nested sandboxes asking for
//! more than they have, and a daemon killed under a running sandbox.
//!
//! Every test starts its own daemon (`nono-daemon-adv-<pid>-<n>`, socket in
//! a fresh directory) and removes everything it made. The attacker is this
//! test binary run as nobody with `NONO_ADV_ROLE` set (see `roles`).
//!
//! Needs root and a real kernel: `cargo test -p nono-tests --test daemon_attacks`.

mod fixture;
mod roles;
mod survive;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fixture::{case, deny_all, new_id, run_attacker, Daemon, Lines, Raw, NOBODY, OTHER};
use nono_tests::sys;
use serde_json::json;

/// The attacker's entry point: does nothing unless run as an attacker.
#[test]
fn attacker_role() {
    if let Ok(role) = std::env::var("NONO_ADV_ROLE") {
        roles::run(&role);
    }
}

/// (1) `place` of anything but the caller's own child is refused and moves
/// nothing.
#[test]
fn place_of_a_foreign_process_is_refused() {
    let d = Daemon::start();
    let rs = run_attacker(
        NOBODY,
        "place",
        &[
            ("NONO_ADV_SOCK", d.sock.display().to_string()),
            ("NONO_ADV_DAEMON_PID", d.pid().to_string()),
        ],
    );
    let own = case(&rs, "own_child");
    assert_eq!(own["reply"]["type"], "placed", "{own}");
    assert!(
        own["after"].as_str().unwrap().contains(&d.name),
        "the own child did not move: {own}"
    );
    for name in [
        "grandchild",
        "parent",
        "root_daemon",
        "self",
        "thread",
        "dev_null",
        "no_fd",
        "two_fds",
    ] {
        let r = case(&rs, name);
        assert_eq!(r["reply"]["type"], "error", "{name} was not refused: {r}");
        assert_eq!(r["before"], r["after"], "{name}: the cgroup changed: {r}");
        assert!(
            !r["after"].as_str().unwrap().contains(&d.name),
            "{name} is in the sandbox: {r}"
        );
    }
    let second = case(&rs, "two_fds_second");
    assert!(!second["after"].as_str().unwrap().contains(&d.name));
    assert_eq!(case(&rs, "status_after")["reply"]["type"], "status");
    d.assert_clean();
}

fn start_holder(d: &Daemon) -> (std::process::Child, Lines, String, String) {
    let mut h = fixture::attacker(
        NOBODY,
        "hold",
        &[("NONO_ADV_SOCK", d.sock.display().to_string())],
    );
    let out = Lines::collect(h.stdout.take().unwrap());
    assert!(
        out.wait_for("\"held\"", Duration::from_secs(10)),
        "holder did not start: {}",
        out.all()
    );
    let held = fixture::results(&out).pop().unwrap();
    let id = held["id"].as_str().unwrap().to_string();
    let token = held["token"].as_str().unwrap().to_string();
    (h, out, id, token)
}

/// (3a) After a restart a sandbox waits for its owner: a wrong token, or
/// the right token from another uid, is refused; the owner's uid with the
/// right token resumes it.
#[test]
fn resume_needs_the_token_and_the_owners_uid() {
    let mut d = Daemon::start();
    let (mut h, _out, id, token) = start_holder(&d);
    // While the owner's connection lives, even its token does not take it.
    let sock = ("NONO_ADV_SOCK", d.sock.display().to_string());
    let rs = run_attacker(
        NOBODY,
        "resume",
        &[
            sock.clone(),
            ("NONO_ADV_ID", id.clone()),
            ("NONO_ADV_TOKEN", token.clone()),
        ],
    );
    assert_eq!(case(&rs, "resume")["reply"]["type"], "error");
    d.kill9();
    d.spawn();
    let other = run_attacker(
        OTHER,
        "resume",
        &[
            sock.clone(),
            ("NONO_ADV_ID", id.clone()),
            ("NONO_ADV_TOKEN", token.clone()),
        ],
    );
    assert_eq!(
        case(&other, "resume")["reply"]["type"],
        "error",
        "another uid resumed: {other:?}"
    );
    let mut bad = token.clone().into_bytes();
    bad[0] = if bad[0] == b'a' { b'b' } else { b'a' };
    let wrong = run_attacker(
        NOBODY,
        "resume",
        &[
            sock.clone(),
            ("NONO_ADV_ID", id.clone()),
            ("NONO_ADV_TOKEN", String::from_utf8(bad).unwrap()),
        ],
    );
    assert_eq!(case(&wrong, "resume")["reply"]["type"], "error");
    // Root is another uid too.
    let mut r = Raw::connect(&d.sock);
    r.send(json!({"type": "resume", "id": id, "token": token}));
    assert_eq!(r.reply().unwrap()["type"], "error");
    drop(r);
    assert_eq!(d.status(), 1, "a refused resume ended the sandbox");
    // The legitimate one.
    let ok = run_attacker(
        NOBODY,
        "resume",
        &[sock, ("NONO_ADV_ID", id), ("NONO_ADV_TOKEN", token)],
    );
    assert_eq!(case(&ok, "resume")["reply"]["type"], "resumed", "{ok:?}");
    drop(h.stdin.take());
    sys::wait_child(&mut h, Duration::from_secs(10), "holder");
    d.assert_clean();
}

/// (3b) A connection receives the events of its own sandbox only.
#[test]
fn events_go_to_the_owner_only() {
    let d = Daemon::start();
    // A loopback port nobody listens on and the sandbox may not reach.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rs = run_attacker(
        NOBODY,
        "events",
        &[
            ("NONO_ADV_SOCK", d.sock.display().to_string()),
            ("NONO_ADV_PORT", port.to_string()),
        ],
    );
    let e = case(&rs, "events");
    assert_eq!(e["child_stdout"], "", "a denied connect succeeded: {e}");
    assert!(e["a"].as_u64().unwrap() >= 1, "the owner got no event: {e}");
    assert_eq!(e["b"], 0, "another sandbox's connection got events: {e}");
    assert_eq!(e["c"], 0, "a plain connection got events: {e}");
    d.assert_clean();
}

/// (4) Malformed, oversized, version 2, unknown type or field, truncated:
/// an error and the connection closed; the daemon serves others after.
#[test]
fn malformed_frames_are_refused_and_the_daemon_keeps_serving() {
    let d = Daemon::start();
    let rs = run_attacker(
        NOBODY,
        "malformed",
        &[("NONO_ADV_SOCK", d.sock.display().to_string())],
    );
    let legit = case(&rs, "legit_status");
    assert_eq!(legit["reply"]["type"], "status", "{legit}");
    assert_eq!(legit["closed"], false, "{legit}");
    for name in [
        "len_ffffffff",
        "len_64k_plus_1",
        "invalid_json",
        "version_2",
        "unknown_type",
        "unknown_field",
    ] {
        let r = case(&rs, name);
        assert_eq!(r["reply"]["type"], "error", "{name}: {r}");
        assert_eq!(r["closed"], true, "{name} left the connection open: {r}");
    }
    assert!(case(&rs, "version_2")["reply"]["message"]
        .as_str()
        .unwrap()
        .contains("version 2"));
    let half = case(&rs, "half_frame");
    assert_ne!(half["reply"]["type"], "status", "{half}");
    assert_eq!(half["closed"], true, "{half}");
    d.assert_clean();
}

/// (4) A frame trickled byte by byte: the daemon closes the connection
/// once the frame is older than its 5 s deadline, whatever the pace.
#[test]
fn a_trickled_frame_is_cut_at_the_deadline() {
    let d = Daemon::start();
    let f = Raw::frame(&json!({"type": "create", "id": new_id(), "policy": deny_all()}));
    let mut r = Raw::connect(&d.sock);
    r.s.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut closed_at = None;
    for b in &f {
        if r.s.write_all(&[*b]).is_err() {
            closed_at = Some(start.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        // The daemon's error frame, then end of stream.
        if let Ok(0) = r.s.read(&mut buf) {
            closed_at = Some(start.elapsed());
            break;
        }
        if start.elapsed() > Duration::from_millis(6500) {
            break;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let at = closed_at.expect("the daemon kept a trickling connection open past its 5 s deadline");
    assert!(at >= Duration::from_secs(4), "closed too early: {at:?}");
    assert_eq!(d.status(), 0);
    d.assert_clean();
}

/// (4) 600 connections from one uid: beyond 512 refused, other users
/// served meanwhile, the uid served again once it closed them.
#[test]
fn connections_per_uid_are_limited() {
    let d = Daemon::start();
    let mut a = fixture::attacker(
        NOBODY,
        "connections",
        &[("NONO_ADV_SOCK", d.sock.display().to_string())],
    );
    let out = Lines::collect(a.stdout.take().unwrap());
    let err = Lines::collect(a.stderr.take().unwrap());
    assert!(
        out.wait_for("\"connections\"", Duration::from_secs(30)),
        "{}\n{}",
        out.all(),
        err.all()
    );
    let c = fixture::results(&out).pop().unwrap();
    assert_eq!(c["served"], 1, "{c}");
    assert_eq!(c["refused"], 600 - 512, "{c}");
    // Another uid meanwhile.
    assert_eq!(d.status(), 0);
    writeln!(a.stdin.take().unwrap()).unwrap();
    assert!(sys::wait_child(&mut a, Duration::from_secs(20), "connections").success());
    assert!(
        out.wait_for("after_close", Duration::from_secs(5)),
        "{}\n{}",
        out.all(),
        err.all()
    );
    let rs = fixture::results(&out);
    assert_eq!(case(&rs, "after_close")["reply"]["type"], "status");
    d.assert_clean();
}

/// (5) The shared maps' entries are limited per uid: with a limit of 10,
/// a policy of 11 ports is refused, one of 10 is created, one more entry
/// is refused until that sandbox ends.
#[test]
fn map_entries_per_uid_are_limited() {
    let d = Daemon::start_with(&["--max-entries-per-uid", "10"]);
    let rs = run_attacker(
        NOBODY,
        "entries",
        &[("NONO_ADV_SOCK", d.sock.display().to_string())],
    );
    let refused = |c: &str| {
        let r = &case(&rs, c)["reply"];
        r["type"] == "error" && r["message"].as_str().unwrap_or("").contains("limit 10")
    };
    assert!(refused("eleven"), "{rs:?}");
    assert_eq!(case(&rs, "ten")["reply"]["type"], "created", "{rs:?}");
    assert!(refused("one_more"), "{rs:?}");
    assert_eq!(case(&rs, "after_end")["reply"]["type"], "created", "{rs:?}");
    assert_eq!(d.status(), 0);
    d.assert_clean();
}

/// (4) The sandbox limit holds while sandboxes are being cleaned up: an
/// `End` is answered before the kill and the cgroup's removal, and a
/// client that creates again at once (limit 2, one sandbox held on another
/// connection) never has more than 2 sandbox cgroups; everything is
/// removed at the end.
#[test]
fn end_then_create_at_once_stays_within_the_sandbox_limit() {
    let d = Daemon::start_with(&["--max-sandboxes-per-uid", "2"]);
    let rs = run_attacker(
        NOBODY,
        "churn",
        &[
            ("NONO_ADV_SOCK", d.sock.display().to_string()),
            ("NONO_ADV_CGPARENT", d.cg_parent.display().to_string()),
        ],
    );
    let c = case(&rs, "churn");
    eprintln!("churn: {c}");
    assert!(c["created"].as_u64().unwrap() >= 1, "{c}");
    assert!(
        c["most"].as_u64().unwrap() <= 2,
        "more sandboxes than the limit: {c}"
    );
    assert_eq!(c["other"], json!([]), "{c}");
    d.assert_clean();
}

/// The daemon SIGKILLed just after it answered `End` (the kill of the
/// sandbox's processes, the cgroup's and the record's removal follow the
/// answer): the sandbox held a shell with 200 children; once the owner has
/// exited, the restarted daemon removes what is left, and none of the
/// sandbox's processes lives on.
#[test]
fn kill9_of_the_daemon_right_after_end_then_restart_cleans_up() {
    // Until one run kills the daemon while the cleanup had not finished
    // (a cgroup or record left at the kill), at most 10 runs.
    let caught = (0..10).any(|_| kill9_right_after_end_once());
    assert!(
        caught,
        "no run killed the daemon before its cleanup was done"
    );
}

/// One run of the above; whether the daemon was killed before its
/// cleanup was done.
fn kill9_right_after_end_once() -> bool {
    let mut d = Daemon::start();
    let mut a = fixture::attacker(
        NOBODY,
        "end_and_hold",
        &[("NONO_ADV_SOCK", d.sock.display().to_string())],
    );
    let out = Lines::collect(a.stdout.take().unwrap());
    let err = Lines::collect(a.stderr.take().unwrap());
    let ended = out.wait_for("\"ended\"", Duration::from_secs(30));
    d.kill9();
    assert!(ended, "{}\n{}", out.all(), err.all());
    let r = fixture::results(&out).pop().unwrap();
    assert_eq!(r["reply"]["type"], "ended", "{r}");
    let sh = r["sh"].as_i64().unwrap() as i32;
    let left = sys::subdirs(&d.cg_parent);
    let records = sys::dir_entries(&d.records_dir());
    let caught = !left.is_empty() || !records.is_empty();
    eprintln!(
        "killed after the answer: cgroups left {left:?}, records left {}",
        records.len()
    );
    drop(a.stdin.take());
    assert!(sys::wait_child(&mut a, Duration::from_secs(20), "end_and_hold").success());
    d.spawn();
    d.assert_clean();
    let procs_of_nobody = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter(|e| {
                std::fs::read_to_string(e.path().join("cmdline"))
                    .is_ok_and(|c| c.starts_with("sleep\u{0}60"))
                    && std::fs::read_to_string(e.path().join("status")).is_ok_and(|s| {
                        s.lines()
                            .any(|l| l.starts_with("Uid:") && l.contains(&NOBODY.to_string()))
                    })
            })
            .count()
    };
    assert!(
        sys::wait_until(Duration::from_secs(5), || procs_of_nobody() == 0
            && !std::path::Path::new(&format!("/proc/{sh}")).exists()),
        "processes of the ended sandbox live on: {} sleeps of uid {NOBODY}, shell {sh} alive: {}",
        procs_of_nobody(),
        std::path::Path::new(&format!("/proc/{sh}")).exists()
    );
    caught
}

/// (4) A flood of requests meets the rate limit; others are served.
/// A client that hands the daemon its own end of the connection (with a
/// request that takes no descriptor) and exits: the connection still ends,
/// and with it the sandbox (cgroup, record). The daemon keeping that
/// descriptor for a later frame would hold the connection open itself.
#[test]
fn a_client_sending_its_own_socket_still_ends_its_sandbox() {
    let d = Daemon::start();
    let rs = run_attacker(
        NOBODY,
        "own_socket",
        &[("NONO_ADV_SOCK", d.sock.display().to_string())],
    );
    assert_eq!(case(&rs, "status")["reply"]["type"], "status");
    d.assert_clean();
}

#[test]
fn request_floods_are_rate_limited() {
    let d = Daemon::start();
    let rs = run_attacker(
        NOBODY,
        "flood",
        &[("NONO_ADV_SOCK", d.sock.display().to_string())],
    );
    let f = case(&rs, "flood");
    assert!(f["ok"].as_u64().unwrap() >= 100, "{f}");
    assert!(f["limited"].as_u64().unwrap() >= 100, "{f}");
    assert_eq!(d.status(), 0);
    d.assert_clean();
}

/// (2) Inside a daemon sandbox allowing loopback port A only, a nested
/// `exec` asking for every loopback port and a proxy endpoint gets the
/// intersection: A works, B (outer refuses) sees no connection.
#[test]
fn a_nested_sandbox_gets_the_intersection() {
    let d = Daemon::start();
    let both = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pb) = (
        both.local_addr().unwrap().port(),
        refused.local_addr().unwrap().port(),
    );
    // Legitimate first: unconfined, both ports take a connection.
    let agent = sys::accessible(&sys::agent_bin());
    let script = format!(
        "(echo a > /dev/tcp/127.0.0.1/{pa}) 2>/dev/null && echo A_OK || echo A_DENIED; \
         (echo b > /dev/tcp/127.0.0.1/{pb}) 2>/dev/null && echo B_OK || echo B_DENIED"
    );
    let sock = d.sock.display().to_string();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&agent)
        .args([
            "exec",
            "--daemon-socket",
            &sock,
            "--allow-unix-socket",
            &sock,
        ])
        .args(["--loopback-port", &pa.to_string(), "--"])
        .arg(&agent)
        .args(["exec", "--daemon-socket", &sock])
        .args(["--proxy-endpoint", "203.0.113.9:443", "--"])
        .args(["bash", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("run nested exec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!(
        "stdout:\n{stdout}\nstderr:\n{stderr}\ndaemon:\n{}",
        d.log.all()
    );
    assert!(stderr.contains("bpf (daemon, nested)"), "{ctx}");
    assert!(stdout.contains("A_OK"), "{ctx}");
    assert!(stdout.contains("B_DENIED"), "{ctx}");
    let accepted = |l: &TcpListener| {
        l.set_nonblocking(true).unwrap();
        let mut n = 0;
        while l.accept().is_ok() {
            n += 1;
        }
        n
    };
    assert_eq!(accepted(&both), 1, "{ctx}");
    assert_eq!(
        accepted(&refused),
        0,
        "the refused port saw a connection: {ctx}"
    );
    d.assert_clean();
}

#[test]
fn a_nested_sandbox_policy_record_is_narrowed() {
    survive::nested_record_is_narrowed();
}

#[test]
fn kill9_of_the_daemon_keeps_the_sandbox_confined_and_a_restart_takes_it_over() {
    survive::kill9_and_takeover();
}

#[test]
fn kill9_of_daemon_and_client_then_restart_removes_the_orphan() {
    survive::kill9_both_then_restart();
}

#[test]
fn a_nested_sandbox_cannot_take_another_users_id() {
    survive::nested_create_cannot_take_anothers_id();
}

/// The records hold every sandbox's resume token: their directories are
/// root's alone (0700), whoever created `/run/nono-agent` first (the daemon
/// can start before any `exec` on a fresh boot).
#[test]
fn records_are_root_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let d = Daemon::start();
    let mut r = Raw::connect(&d.sock);
    r.send(json!({"type": "create", "id": new_id(), "policy": deny_all()}));
    assert_eq!(r.reply().unwrap()["type"], "created");
    let recs = d.records_dir();
    assert_eq!(sys::dir_entries(&recs).len(), 1, "no record written");
    for dir in [recs.parent().unwrap(), recs.as_path()] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} has mode {mode:o}", dir.display());
    }
    drop(r);
    d.assert_clean();
}

#[test]
fn an_upgrade_to_another_build_under_load_has_no_gap() {
    survive::upgrade_under_load_has_no_gap();
}
