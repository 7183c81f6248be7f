//! What the unprivileged attacker does (this test binary, run as another
//! uid with `NONO_ADV_ROLE` set). Each prints `ADV {json}` result lines;
//! the root side judges them.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fixture::{cgroup_of, deny_all, new_id, pidfd_open, Raw};

fn out(v: Value) {
    println!("ADV {v}");
}

fn sock() -> PathBuf {
    PathBuf::from(std::env::var("NONO_ADV_SOCK").expect("NONO_ADV_SOCK"))
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"))
}

fn sleeper() -> Child {
    Command::new("sleep").arg("30").spawn().unwrap()
}

fn create(r: &mut Raw, policy: Value) -> Value {
    r.send(json!({"type": "create", "id": new_id(), "policy": policy}));
    r.reply().expect("create reply")
}

pub fn run(role: &str) {
    match role {
        "place" => place(),
        "hold" => hold(),
        "resume" => resume(),
        "events" => events(),
        "malformed" => malformed(),
        "connections" => connections(),
        "flood" => flood(),
        "entries" => entries(),
        "churn" => churn(),
        "end_and_hold" => end_and_hold(),
        "own_socket" => own_socket(),
        "outer" => outer(),
        "inner" => inner(),
        _ => panic!("unknown role {role}"),
    }
}

/// Hostile `place` requests on a connection that owns a sandbox.
fn place() {
    let daemon_pid: i32 = env("NONO_ADV_DAEMON_PID").parse().unwrap();
    let mut r = Raw::connect(&sock());
    let created = create(&mut r, deny_all());
    assert_eq!(created["type"], "created", "{created}");
    let mut try_place = |name: &str, pid: i32, fds: &[i32]| {
        let before = cgroup_of(pid);
        r.send_fds(json!({"type": "place"}), fds);
        let reply = r.reply().expect("place reply");
        out(json!({"case": name, "reply": reply, "before": before, "after": cgroup_of(pid)}));
    };
    // Legitimate: the caller's own child.
    let mut own = sleeper();
    let fd = pidfd_open(own.id() as i32, 0).unwrap();
    try_place("own_child", own.id() as i32, &[fd.as_raw_fd()]);
    // (a) a grandchild (same uid, same cgroup, not a child).
    let mut sh = Command::new("sh")
        .args(["-c", "sleep 30 & echo $!; exec sleep 30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(sh.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let gc: i32 = line.trim().parse().unwrap();
    let fd = pidfd_open(gc, 0).unwrap();
    try_place("grandchild", gc, &[fd.as_raw_fd()]);
    // The parent (root's test process).
    let ppid = std::os::unix::process::parent_id() as i32;
    let fd = pidfd_open(ppid, 0).unwrap();
    try_place("parent", ppid, &[fd.as_raw_fd()]);
    // (b) a root process: the daemon itself.
    let fd = pidfd_open(daemon_pid, 0).unwrap();
    try_place("root_daemon", daemon_pid, &[fd.as_raw_fd()]);
    // (c) itself.
    let me = std::process::id() as i32;
    let fd = pidfd_open(me, 0).unwrap();
    try_place("self", me, &[fd.as_raw_fd()]);
    // (d) a thread of its own child? A thread of itself (PIDFD_THREAD).
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        // SAFETY: plain syscall.
        tx.send(unsafe { libc::gettid() }).unwrap();
        let _ = stop_rx.recv();
    });
    let tid = rx.recv().unwrap();
    let fd = pidfd_open(tid, libc::O_EXCL as u32).expect("pidfd_open(PIDFD_THREAD)");
    try_place("thread", tid, &[fd.as_raw_fd()]);
    stop_tx.send(()).unwrap();
    t.join().unwrap();
    // (e) not a pidfd.
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut victim = sleeper();
    let vpid = victim.id() as i32;
    try_place("dev_null", vpid, &[null.as_raw_fd()]);
    // (f) no descriptor.
    try_place("no_fd", vpid, &[]);
    // (g) two pidfds of own children.
    let mut second = sleeper();
    let f1 = pidfd_open(vpid, 0).unwrap();
    let f2 = pidfd_open(second.id() as i32, 0).unwrap();
    try_place("two_fds", vpid, &[f1.as_raw_fd(), f2.as_raw_fd()]);
    out(json!({"case": "two_fds_second", "after": cgroup_of(second.id() as i32)}));
    // The connection still serves.
    r.send(json!({"type": "status"}));
    out(json!({"case": "status_after", "reply": r.reply()}));
    for c in [&mut own, &mut sh, &mut victim, &mut second] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = Command::new("kill").arg(gc.to_string()).status();
}

/// Creates a sandbox, places a sleeper in it, prints id and token, then
/// waits until stdin closes.
fn hold() {
    let mut r = Raw::connect(&sock());
    let id = new_id();
    r.send(json!({"type": "create", "id": id, "policy": deny_all()}));
    let created = r.reply().unwrap();
    assert_eq!(created["type"], "created", "{created}");
    let mut child = sleeper();
    let fd = pidfd_open(child.id() as i32, 0).unwrap();
    r.send_fds(json!({"type": "place"}), &[fd.as_raw_fd()]);
    assert_eq!(r.reply().unwrap()["type"], "placed");
    out(json!({"case": "held", "id": id, "token": created["token"], "child": child.id()}));
    std::io::stdout().flush().unwrap();
    let mut s = String::new();
    let _ = std::io::stdin().read_to_string(&mut s);
    let _ = child.kill();
    let _ = child.wait();
}

/// `resume` with the id and token from the environment.
fn resume() {
    let mut r = Raw::connect(&sock());
    r.send(json!({"type": "resume", "id": env("NONO_ADV_ID"), "token": env("NONO_ADV_TOKEN")}));
    out(json!({"case": "resume", "reply": r.reply()}));
}

/// Denials in sandbox A; connections B (with a sandbox) and C (without)
/// must receive none of A's events.
fn events() {
    let mut a = Raw::connect(&sock());
    assert_eq!(create(&mut a, deny_all())["type"], "created");
    let mut b = Raw::connect(&sock());
    assert_eq!(create(&mut b, deny_all())["type"], "created");
    let mut c = Raw::connect(&sock());
    c.send(json!({"type": "status"}));
    assert_eq!(c.reply().unwrap()["type"], "status");
    let port = env("NONO_ADV_PORT");
    let mut child = Command::new("bash")
        .args([
            "-c",
            &format!(
                "read x; for i in 1 2 3 4 5; do (echo x > /dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo CONNECTED; done"
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let fd = pidfd_open(child.id() as i32, 0).unwrap();
    a.send_fds(json!({"type": "place"}), &[fd.as_raw_fd()]);
    assert_eq!(a.reply().unwrap()["type"], "placed");
    writeln!(child.stdin.take().unwrap()).unwrap();
    let mut s = String::new();
    child.stdout.take().unwrap().read_to_string(&mut s).unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let count = |r: &mut Raw| {
        r.s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        let mut n = 0;
        while let Some(v) = r.recv() {
            if v["type"] == "event" {
                n += 1;
            }
        }
        n
    };
    out(json!({
        "case": "events",
        "child_stdout": s,
        "a": count(&mut a),
        "b": count(&mut b),
        "c": count(&mut c),
    }));
}

/// One connection per hostile frame: the reply and whether the daemon
/// closed the connection.
fn malformed() {
    let s = sock();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("legit_status", Raw::frame(&json!({"type": "status"}))),
        ("len_ffffffff", vec![0xff, 0xff, 0xff, 0xff, b'{']),
        ("len_64k_plus_1", (65537u32).to_be_bytes().to_vec()),
        ("invalid_json", {
            let mut f = 5u32.to_be_bytes().to_vec();
            f.extend(b"{nope");
            f
        }),
    ];
    for (name, body) in [
        ("version_2", br#"{"v":2,"body":{"type":"status"}}"#.to_vec()),
        (
            "unknown_type",
            br#"{"v":1,"body":{"type":"become_root"}}"#.to_vec(),
        ),
        (
            "unknown_field",
            br#"{"v":1,"body":{"type":"status","uid":0}}"#.to_vec(),
        ),
    ] {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend(body);
        cases.push((name, f));
    }
    for (name, bytes) in cases {
        let mut r = Raw::connect(&s);
        r.s.write_all(&bytes).unwrap();
        let reply = r.recv();
        let closed = r.closed_within(Duration::from_secs(2));
        out(json!({"case": name, "reply": reply, "closed": closed}));
    }
    // Half a frame, then close our side.
    let mut r = Raw::connect(&s);
    let f = Raw::frame(&json!({"type": "status"}));
    r.s.write_all(&f[..f.len() / 2]).unwrap();
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    let reply = r.recv();
    out(
        json!({"case": "half_frame", "reply": reply, "closed": r.closed_within(Duration::from_secs(2))}),
    );
}

/// 600 connections at once from one uid.
fn connections() {
    let s = sock();
    let mut conns: Vec<Raw> = (0..600).map(|_| Raw::connect(&s)).collect();
    let mut refused = 0;
    let mut served = 0;
    // The daemon answers a refused connection at once; the others wait for
    // a request.
    std::thread::sleep(Duration::from_millis(500));
    for r in conns.iter_mut() {
        r.s.set_nonblocking(true).unwrap();
        if let Some(v) = r.recv() {
            if v["type"] == "error"
                && v["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("connections open already")
            {
                refused += 1;
            }
        }
        r.s.set_nonblocking(false).unwrap();
    }
    // The first one is served.
    conns[0]
        .s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    conns[0].send(json!({"type": "status"}));
    if conns[0].reply().map(|v| v["type"] == "status") == Some(true) {
        served += 1;
    }
    out(json!({"case": "connections", "refused": refused, "served": served}));
    // Tell root we hold them, then wait until it checked the daemon serves
    // other users meanwhile.
    std::io::stdout().flush().unwrap();
    let mut x = String::new();
    let _ = std::io::stdin().read_line(&mut x);
    drop(conns);
    std::thread::sleep(Duration::from_millis(300));
    let mut r = Raw::connect(&s);
    r.send(json!({"type": "status"}));
    out(json!({"case": "after_close", "reply": r.reply()}));
}

/// Sandboxes whose policies together exceed the per-uid entry limit (the
/// daemon runs with 10): one over the limit alone, one at the limit, then
/// one more entry.
fn entries() {
    let ports = |n: u16| json!({"loopback_any": false, "loopback_ports": (1..=n).collect::<Vec<u16>>(), "proxies": []});
    let mut a = Raw::connect(&sock());
    out(json!({"case": "eleven", "reply": create(&mut a, ports(11))}));
    let mut b = Raw::connect(&sock());
    out(json!({"case": "ten", "reply": create(&mut b, ports(10))}));
    let mut c = Raw::connect(&sock());
    out(json!({"case": "one_more", "reply": create(&mut c, ports(1))}));
    drop(b);
    std::thread::sleep(Duration::from_millis(300));
    let mut e = Raw::connect(&sock());
    out(json!({"case": "after_end", "reply": create(&mut e, ports(1))}));
}

/// `End` answered before the cleanup (kill, cgroup removal) is done, then
/// at once `create` again (on a new connection: the answer to `End` is the
/// connection's last frame), 40 times while another connection
/// holds a sandbox. Each ended sandbox held a shell with 20 children (so
/// its kill takes a while). Right after every `created`, the sandbox
/// cgroups under the daemon's parent are counted: with a limit of 2 per
/// uid there may never be more than 2, ended-but-not-removed ones included.
fn churn() {
    let parent = PathBuf::from(env("NONO_ADV_CGPARENT"));
    let count = || {
        std::fs::read_dir(&parent)
            .map(|rd| rd.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0)
    };
    let mut holder = Raw::connect(&sock());
    assert_eq!(create(&mut holder, deny_all())["type"], "created");
    let (mut created, mut limited, mut most) = (0u32, 0u32, 0usize);
    let mut other = Vec::new();
    for _ in 0..40 {
        let mut r = Raw::connect(&sock());
        let reply = create(&mut r, deny_all());
        if reply["type"] != "created" {
            if reply["message"]
                .as_str()
                .unwrap_or("")
                .contains("(limit 2)")
            {
                limited += 1;
            } else {
                other.push(reply);
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        created += 1;
        most = most.max(count());
        // A shell placed before it forks, then 20 children in the sandbox.
        let mut sh = placed_shell(&mut r, 20, 30);
        r.send(json!({"type": "end"}));
        let ended = r.reply().expect("end reply");
        assert_eq!(ended["type"], "ended", "{ended}");
        // The daemon kills the shell (after its answer).
        let _ = sh.wait();
    }
    out(
        json!({"case": "churn", "created": created, "limited": limited, "most": most, "other": other}),
    );
}

/// Places a shell in the sandbox of `r` before it forks (it waits for a
/// line on stdin), then lets it start `children` `sleep SECS` in there and
/// returns once it says they run.
fn placed_shell(r: &mut Raw, children: u32, secs: u32) -> std::process::Child {
    let script = format!(
        "read x; i=0; while [ $i -lt {children} ]; do sleep {secs} & i=$((i+1)); done; \
         echo ready; wait"
    );
    let mut sh = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let fd = pidfd_open(sh.id() as i32, 0).unwrap();
    r.send_fds(json!({"type": "place"}), &[fd.as_raw_fd()]);
    let placed = r.reply().expect("place reply");
    assert_eq!(placed["type"], "placed", "{placed}");
    writeln!(sh.stdin.take().unwrap()).unwrap();
    let mut line = String::new();
    BufReader::new(sh.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    sh
}

/// A sandbox holding a shell with 200 children, ended; then the owner
/// stays alive until its stdin closes and exits without waiting for the
/// shell (the root side SIGKILLs the daemon as soon as it reads `ended`,
/// while the cleanup that follows the answer may still run).
fn end_and_hold() {
    let mut r = Raw::connect(&sock());
    assert_eq!(create(&mut r, deny_all())["type"], "created");
    let sh = placed_shell(&mut r, 200, 60);
    r.send(json!({"type": "end"}));
    let ended = r.reply().expect("end reply");
    out(json!({"case": "ended", "reply": ended, "sh": sh.id()}));
    std::io::stdout().flush().unwrap();
    let mut s = String::new();
    let _ = std::io::stdin().read_to_string(&mut s);
    // Not waited for: when the daemon was killed before its cleanup, the
    // shell and its sleeps live on until the restarted daemon ends the
    // sandbox of this (then exited) owner, which is what the test checks.
    drop(sh);
}

/// Creates a sandbox with a placed sleeper, then sends the daemon its own
/// end of the connection with a request that takes no descriptor, and
/// exits: the daemon must still see the connection end.
fn own_socket() {
    let mut r = Raw::connect(&sock());
    assert_eq!(create(&mut r, deny_all())["type"], "created");
    let mut child = sleeper();
    let fd = pidfd_open(child.id() as i32, 0).unwrap();
    r.send_fds(json!({"type": "place"}), &[fd.as_raw_fd()]);
    assert_eq!(r.reply().unwrap()["type"], "placed");
    let own = r.s.as_raw_fd();
    r.send_fds(json!({"type": "status"}), &[own]);
    out(json!({"case": "status", "reply": r.reply(), "child": child.id()}));
    let _ = child.kill();
    let _ = child.wait();
}

/// 1000 pipelined requests on one connection.
fn flood() {
    let mut r = Raw::connect(&sock());
    let mut all = Vec::new();
    for _ in 0..1000 {
        all.extend(Raw::frame(&json!({"type": "status"})));
    }
    let mut w = r.s.try_clone().unwrap();
    let t = std::thread::spawn(move || w.write_all(&all).unwrap());
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..1000 {
        let v = r.reply().expect("a reply per request");
        if v["type"] == "status" {
            ok += 1;
        } else if v["message"]
            .as_str()
            .unwrap_or("")
            .contains("too many requests")
        {
            limited += 1;
        }
    }
    t.join().unwrap();
    out(json!({"case": "flood", "ok": ok, "limited": limited}));
}

/// An outer sandbox allowing loopback port `NONO_ADV_PORT` only; in it, a
/// child asks the daemon for every loopback port and a proxy endpoint.
pub fn outer() {
    let mut r = Raw::connect(&sock());
    let port: u16 = env("NONO_ADV_PORT").parse().unwrap();
    let created = create(
        &mut r,
        json!({"loopback_any": false, "loopback_ports": [port], "proxies": []}),
    );
    assert_eq!(created["type"], "created", "{created}");
    let exe = std::env::current_exe().unwrap();
    let mut inner = Command::new(exe)
        .args([
            "--exact",
            "attacker_role",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NONO_ADV_ROLE", "inner")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let fd = pidfd_open(inner.id() as i32, 0).unwrap();
    r.send_fds(json!({"type": "place"}), &[fd.as_raw_fd()]);
    assert_eq!(r.reply().unwrap()["type"], "placed");
    let mut w = inner.stdin.take().unwrap();
    writeln!(w).unwrap();
    let mut s = String::new();
    let _ = std::io::stdin().read_to_string(&mut s);
    drop(w);
    inner.wait().unwrap();
}

pub fn inner() {
    let mut x = String::new();
    std::io::stdin().read_line(&mut x).unwrap();
    let mut r = Raw::connect(&sock());
    let mut proxy = [0u8; 16];
    proxy[10] = 0xff;
    proxy[11] = 0xff;
    proxy[12..].copy_from_slice(&[203, 0, 113, 9]);
    // The id: fresh, or one the root side names (another user's sandbox).
    let id = std::env::var("NONO_ADV_INNER_ID").unwrap_or_else(|_| new_id());
    r.send(json!({
        "type": "create",
        "id": id,
        "policy": {"loopback_any": true, "loopback_ports": [], "proxies": [[proxy, 443]]},
    }));
    let created = r.reply().expect("create reply");
    out(json!({"case": "inner", "reply": created}));
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_string(&mut x);
}
