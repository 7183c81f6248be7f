//! The nested policy as recorded, and the daemon killed under a running
//! sandbox.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nono_tests::netns::{self, NetFixture};
use nono_tests::sys;
use serde_json::Value;

use crate::fixture::{self, Daemon, Lines, NOBODY};

/// (2) The nested sandbox's recorded policy is the intersection: the outer
/// port only, no proxy endpoint.
pub fn nested_record_is_narrowed() {
    let d = Daemon::start();
    let port = 40123u16;
    let mut o = fixture::attacker(
        NOBODY,
        "outer",
        &[
            ("NONO_ADV_SOCK", d.sock.display().to_string()),
            ("NONO_ADV_PORT", port.to_string()),
        ],
    );
    let out = Lines::collect(o.stdout.take().unwrap());
    let err = Lines::collect(o.stderr.take().unwrap());
    assert!(
        out.wait_for("\"inner\"", Duration::from_secs(15)),
        "{}\n{}",
        out.all(),
        err.all()
    );
    let inner = fixture::case(&fixture::results(&out), "inner").clone();
    assert_eq!(inner["reply"]["type"], "created", "{inner}");
    assert_eq!(inner["reply"]["nested"], true, "{inner}");
    let recs: Vec<Value> = sys::dir_entries(&d.records_dir())
        .iter()
        .map(|f| {
            serde_json::from_str(&std::fs::read_to_string(d.records_dir().join(f)).unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(recs.len(), 2, "{recs:?}");
    let nested = recs
        .iter()
        .find(|r| !r["parent"].is_null())
        .unwrap_or_else(|| panic!("no nested record: {recs:?}"));
    assert_eq!(nested["policy"]["loopback_any"], false, "{nested}");
    assert_eq!(
        nested["policy"]["loopback_ports"],
        serde_json::json!([port]),
        "{nested}"
    );
    assert_eq!(
        nested["policy"]["proxies"],
        serde_json::json!([]),
        "{nested}"
    );
    drop(o.stdin.take());
    assert!(sys::wait_child(&mut o, Duration::from_secs(10), "outer").success());
    d.assert_clean();
}

fn accepted_within(l: &TcpListener, t: Duration) -> usize {
    l.set_nonblocking(true).unwrap();
    let mut n = 0;
    let end = std::time::Instant::now() + t;
    while std::time::Instant::now() < end {
        if l.accept().is_ok() {
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    n
}

/// (5) kill -9 of the daemon: the sandbox stays confined (the netns test
/// host sees nothing), loopback keeps working; a restart takes it over, the
/// client reconnects, and the sandbox is removed when the client exits.
pub fn kill9_and_takeover() {
    let mut d = Daemon::start();
    let Hosts {
        fx,
        server,
        lo,
        port,
        lport,
    } = reachable_hosts();
    let dir = sys::TempDir::new("dadv-kill9");
    dir.chown(NOBODY, NOBODY);
    let go = dir.path("go");
    let go2 = dir.path("go2");
    let script = format!(
        "echo READY; while [ ! -e {go} ]; do sleep 0.05; done; \
         (echo x > /dev/tcp/198.51.100.2/{port}) 2>/dev/null && echo REMOTE_OK || echo REMOTE_DENIED; \
         (echo y > /dev/tcp/127.0.0.1/{lport}) 2>/dev/null && echo LO_OK || echo LO_DENIED; \
         while [ ! -e {go2} ]; do sleep 0.05; done",
        go = go.display(),
        go2 = go2.display()
    );
    let (mut c, out, err) = sandboxed_script(&fx, &d, &script);
    macro_rules! ctx {
        () => {
            format!(
                "stdout:\n{}\nstderr:\n{}\ndaemon:\n{}",
                out.all(),
                err.all(),
                d.log.all()
            )
        };
    }
    assert!(
        err.wait_for("bpf (daemon)", Duration::from_secs(15)),
        "{}",
        ctx!()
    );
    // Placed (the command runs only once the daemon said so) and in the
    // sandbox cgroup.
    assert!(out.wait_for("READY", Duration::from_secs(10)), "{}", ctx!());
    assert!(
        sys::wait_until(Duration::from_secs(5), || {
            sys::subdirs(&d.cg_parent)
                .iter()
                .any(|s| !sys::cgroup_procs(&d.cg_parent.join(s)).is_empty())
        }),
        "{}",
        ctx!()
    );
    d.kill9();
    std::fs::write(&go, "").unwrap();
    assert!(out.wait_for("LO_", Duration::from_secs(10)), "{}", ctx!());
    assert!(out.all().contains("REMOTE_DENIED"), "{}", ctx!());
    assert!(out.all().contains("LO_OK"), "{}", ctx!());
    assert_eq!(
        accepted_within(&server, Duration::from_millis(500)),
        0,
        "the test host saw a connection: {}",
        ctx!()
    );
    assert_eq!(
        accepted_within(&lo, Duration::from_millis(200)),
        1,
        "{}",
        ctx!()
    );
    d.spawn();
    assert!(
        d.log
            .wait_for("took over the pinned programs", Duration::from_secs(5)),
        "{}",
        ctx!()
    );
    assert!(
        err.wait_for("reconnected to the daemon", Duration::from_secs(10)),
        "{}",
        ctx!()
    );
    std::fs::write(&go2, "").unwrap();
    let st = sys::wait_child(&mut c, Duration::from_secs(15), "exec");
    assert!(st.success(), "{st:?} {}", ctx!());
    d.assert_clean();
}

/// The test host (198.51.100.2 in the fixture's server namespace) and a
/// loopback listener in the client namespace; the test host is first shown
/// reachable from outside any sandbox.
struct Hosts {
    fx: NetFixture,
    server: TcpListener,
    lo: TcpListener,
    port: u16,
    lport: u16,
}

fn reachable_hosts() -> Hosts {
    let fx = NetFixture::new();
    let port = fx.port();
    let server = netns::in_netns(&fx.server.clone(), move || {
        TcpListener::bind(("198.51.100.2", port)).unwrap()
    });
    let lo = netns::in_netns(&fx.client.clone(), || {
        TcpListener::bind("127.0.0.1:0").unwrap()
    });
    let lport = lo.local_addr().unwrap().port();
    // Legitimate first: outside the sandbox the test host is reachable.
    let o = fx.run_in_client(&[
        "bash",
        "-c",
        &format!("echo hi > /dev/tcp/198.51.100.2/{port}"),
    ]);
    assert_eq!(o.code(), 0, "{}", o.describe());
    assert_eq!(accepted_within(&server, Duration::from_millis(500)), 1);
    Hosts {
        fx,
        server,
        lo,
        port,
        lport,
    }
}

/// `exec` through the daemon as nobody in the client namespace, running
/// `script` with bash; its stdout and stderr lines.
fn sandboxed_script(fx: &NetFixture, d: &Daemon, script: &str) -> (Child, Lines, Lines) {
    let agent = sys::accessible(&sys::agent_bin());
    let sock = d.sock.display().to_string();
    let mut c = fx
        .client_command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&agent)
        .args(["exec", "--daemon-socket", &sock, "--"])
        .args(["bash", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Lines::collect(c.stdout.take().unwrap());
    let err = Lines::collect(c.stderr.take().unwrap());
    (c, out, err)
}

/// (5) kill -9 of the daemon and of the client: the restarted daemon
/// removes the orphaned sandbox within about a second.
pub fn kill9_both_then_restart() {
    let mut d = Daemon::start();
    let agent = sys::accessible(&sys::agent_bin());
    let sock = d.sock.display().to_string();
    let mut c = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&agent)
        .args(["exec", "--daemon-socket", &sock, "--"])
        .args(["sh", "-c", "echo READY; exec sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = Lines::collect(c.stderr.take().unwrap());
    let out = Lines::collect(c.stdout.take().unwrap());
    assert!(
        out.wait_for("READY", Duration::from_secs(15)),
        "{}",
        err.all()
    );
    assert!(sys::wait_until(Duration::from_secs(5), || {
        sys::subdirs(&d.cg_parent)
            .iter()
            .any(|s| !sys::cgroup_procs(&d.cg_parent.join(s)).is_empty())
    }));
    d.kill9();
    let _ = c.kill();
    let _ = c.wait();
    // The sandboxed sleep outlives both.
    assert!(!sys::subdirs(&d.cg_parent).is_empty());
    d.spawn();
    let t = std::time::Instant::now();
    assert!(
        sys::wait_until(Duration::from_millis(1500), || sys::subdirs(&d.cg_parent)
            .is_empty()),
        "the orphaned sandbox is still there after {:?}: {:?}\n{}",
        t.elapsed(),
        sys::subdirs(&d.cg_parent),
        d.log.all()
    );
    d.assert_clean();
}

/// A nested sandbox may not take the id of another user's sandbox (ids
/// are world-readable as cgroup directory names): the daemon's table is
/// keyed by id, so the victim's events, record and end would become the
/// attacker's.
pub fn nested_create_cannot_take_anothers_id() {
    let d = Daemon::start();
    // The victim: root's sandbox.
    let victim_id = fixture::new_id();
    let mut v = crate::fixture::Raw::connect(&d.sock);
    v.send(serde_json::json!({"type": "create", "id": victim_id, "policy": fixture::deny_all()}));
    assert_eq!(v.reply().unwrap()["type"], "created");
    let mut o = fixture::attacker(
        NOBODY,
        "outer",
        &[
            ("NONO_ADV_SOCK", d.sock.display().to_string()),
            ("NONO_ADV_PORT", "40124".to_string()),
            ("NONO_ADV_INNER_ID", victim_id.clone()),
        ],
    );
    let out = Lines::collect(o.stdout.take().unwrap());
    let err = Lines::collect(o.stderr.take().unwrap());
    assert!(
        out.wait_for("\"inner\"", Duration::from_secs(15)),
        "{}\n{}",
        out.all(),
        err.all()
    );
    let inner = fixture::case(&fixture::results(&out), "inner").clone();
    let rec: Value = serde_json::from_str(
        &std::fs::read_to_string(d.records_dir().join(format!("{victim_id}.json")))
            .unwrap_or_default(),
    )
    .unwrap_or(Value::Null);
    assert_eq!(rec["uid"], 0, "the victim's record was replaced: {rec}");
    assert_eq!(
        inner["reply"]["type"], "error",
        "a nested sandbox took another user's id: {inner}"
    );
    drop(o.stdin.take());
    assert!(sys::wait_child(&mut o, Duration::from_secs(10), "outer").success());
    // The victim's sandbox is still its own: it ends it.
    assert_eq!(d.status(), 1);
    v.send(serde_json::json!({"type": "end"}));
    assert_eq!(v.reply().unwrap()["type"], "ended");
    d.assert_clean();
}

/// An upgrade under load: the daemon is killed and a daemon of another
/// build (`--build-salt`: its pins go to another directory) starts while the
/// sandbox keeps connecting. The new daemon copies the old build's entries
/// into its maps before attaching its programs and only then removes the
/// old pins: at no moment is the sandbox unconfined (the test host sees no
/// connection) or over-blocked (every loopback connect of the loop works).
pub fn upgrade_under_load_has_no_gap() {
    let mut d = Daemon::start();
    let Hosts {
        fx,
        server,
        // Kept open: the loop's loopback connects need it listening.
        lo: _lo,
        port,
        lport,
    } = reachable_hosts();
    let dir = sys::TempDir::new("dadv-upgrade");
    dir.chown(NOBODY, NOBODY);
    let go = dir.path("go");
    // 60 rounds of 50 ms: about 3 s of connects across the restart.
    let script = format!(
        "echo READY; while [ ! -e {go} ]; do sleep 0.05; done; r=0; l=0; \
         for i in $(seq 60); do \
           (echo x > /dev/tcp/198.51.100.2/{port}) 2>/dev/null && r=$((r+1)); \
           (echo y > /dev/tcp/127.0.0.1/{lport}) 2>/dev/null && l=$((l+1)); \
           sleep 0.05; done; echo REMOTE_OK=$r LO_OK=$l",
        go = go.display(),
    );
    let (mut c, out, err) = sandboxed_script(&fx, &d, &script);
    macro_rules! ctx {
        () => {
            format!(
                "stdout:\n{}\nstderr:\n{}\ndaemon:\n{}",
                out.all(),
                err.all(),
                d.log.all()
            )
        };
    }
    assert!(out.wait_for("READY", Duration::from_secs(15)), "{}", ctx!());
    let bpffs = sys::bpffs_mount().expect("bpffs");
    let pins = bpffs.join(&d.name);
    let before = sys::subdirs(&pins);
    assert_eq!(before.len(), 1, "{before:?}");
    std::fs::write(&go, "").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    d.kill9();
    d.extra
        .extend(["--build-salt".to_string(), "upgrade".to_string()]);
    d.spawn();
    assert!(
        d.log.wait_for(
            "took over 1 sandbox(es) from another build",
            Duration::from_secs(10)
        ),
        "{}",
        ctx!()
    );
    let after = sys::subdirs(&pins);
    assert_eq!(after.len(), 1, "old pins must be gone: {after:?}");
    assert_ne!(after, before, "the new build pins elsewhere");
    assert!(
        out.wait_for("LO_OK=", Duration::from_secs(20)),
        "{}",
        ctx!()
    );
    assert!(out.all().contains("REMOTE_OK=0 LO_OK=60"), "{}", ctx!());
    assert_eq!(
        accepted_within(&server, Duration::from_millis(500)),
        0,
        "the test host saw a connection during the upgrade: {}",
        ctx!()
    );
    assert!(
        err.wait_for("reconnected to the daemon", Duration::from_secs(10)),
        "{}",
        ctx!()
    );
    let st = sys::wait_child(&mut c, Duration::from_secs(15), "exec");
    assert!(st.success(), "{st:?} {}", ctx!());
    d.assert_clean();
}
