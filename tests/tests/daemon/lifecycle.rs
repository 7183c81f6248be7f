//! Sandbox lifetime through the daemon: a SIGKILLed client leaves nothing,
//! and 200 sandboxes from 4 users at once all work and leave nothing. Each
//! test has its own daemon (so "nothing left" means nothing in it).

use std::collections::HashSet;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nono_tests::daemon::Daemon;
use nono_tests::runner::{exec_command, ExecOpts, RunAs};
use nono_tests::sys;

const ENFORCER_LINE: &str = "nono-agent: enforcer: bpf (daemon)";

/// Client-death runs (the issue asks 1,000; 50 keep this test well under a
/// minute, each run waiting for the agent's start-up).
const KILL_RUNS: u32 = 50;

fn opts(d: &Daemon, user: RunAs) -> ExecOpts {
    ExecOpts {
        enforcer: Some("bpf".into()),
        user: Some(user),
        daemon_socket: Some(d.socket.clone()),
        ..Default::default()
    }
}

/// A uid of its own for run `i` of this test process, outside the range of
/// `RunAs::fresh` (which other tests in this binary use concurrently), so
/// "no process of this uid" means "nothing of this run".
fn own_user(i: u32) -> RunAs {
    let id = 0x5f00_0000 + (std::process::id() & 0xffff) * 64 + i % 64;
    RunAs { uid: id, gid: id }
}

/// xorshift64*: kill delays, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Pids of `uid` running `sleep` inside a sandbox of `d`.
fn placed_sleepers(d: &Daemon, uid: u32) -> Vec<i32> {
    let prefix = format!("0::/{}/", d.name);
    sys::pids_of_uid(uid)
        .into_iter()
        .filter(|&p| {
            sys::comm(p).as_deref() == Some("sleep")
                && std::fs::read_to_string(format!("/proc/{p}/cgroup"))
                    .is_ok_and(|c| c.lines().any(|l| l.starts_with(&prefix)))
        })
        .collect()
}

/// SIGKILL the client `nono-agent exec` (not its child) while the child
/// sleeps, or earlier (random delays of 0-50 ms, half of them counted from
/// the start, half from the moment the child sleeps in its sandbox
/// cgroup): within 1 s the sandbox cgroup is gone and no process of the
/// run is alive. Afterwards no cgroup and no record is left.
#[test]
fn killed_client_leaves_nothing() {
    let d = Daemon::start();
    let agent = sys::agent_bin();
    let first = own_user(63);
    let out = sys::run_timeout(
        exec_command(&agent, None, &opts(&d, first)).args([
            "sh",
            "-c",
            "grep ^0:: /proc/self/cgroup",
        ]),
        sys::CMD_TIMEOUT,
    );
    assert!(
        out.status.success()
            && out.stderr.lines().any(|l| l == ENFORCER_LINE)
            && out.stdout.starts_with(&format!("0::/{}/", d.name)),
        "a plain run through the daemon failed: {}\ndaemon: {}",
        out.describe(),
        d.log()
    );
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("killed_client_leaves_nothing: seed {seed:#x}, {KILL_RUNS} runs");
    let mut rng = Rng(seed);
    let start = Instant::now();
    let (mut placed, mut before) = (0, 0);
    for i in 0..KILL_RUNS {
        let user = own_user(i);
        let mut cmd = exec_command(&agent, None, &opts(&d, user));
        cmd.args(["sleep", "30"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut client = cmd.spawn().expect("spawn the client");
        let delay = Duration::from_millis(rng.next() % 51);
        let after_placement = i % 2 == 1;
        if after_placement {
            let ok = sys::wait_until(Duration::from_secs(10), || {
                !placed_sleepers(&d, user.uid).is_empty()
            });
            if !ok {
                let _ = client.kill();
                let _ = client.wait();
                panic!(
                    "run {i}: the child never slept in a sandbox of the daemon\ndaemon: {}",
                    d.log()
                );
            }
        }
        std::thread::sleep(delay);
        let sleepers = placed_sleepers(&d, user.uid);
        if sleepers.is_empty() {
            before += 1;
        } else {
            placed += 1;
        }
        client.kill().expect("SIGKILL the client");
        client.wait().expect("reap the client");
        let t = Instant::now();
        let clean = sys::wait_until(Duration::from_secs(1), || {
            d.sandbox_cgroups().is_empty() && sys::pids_of_uid(user.uid).is_empty()
        });
        let left = sys::pids_of_uid(user.uid);
        for &p in &left {
            sys::kill_pid(p);
        }
        assert!(
            clean,
            "run {i} (seed {seed:#x}, kill {delay:?} after {}): 1 s after the client was \
             SIGKILLed ({:?} ago): cgroups left {:?}, processes of uid {} left {:?} (the \
             sleeping child was {sleepers:?})\ndaemon: {}",
            if after_placement {
                "placement"
            } else {
                "start"
            },
            t.elapsed(),
            d.sandbox_cgroups(),
            user.uid,
            left,
            d.log()
        );
    }
    eprintln!(
        "killed_client_leaves_nothing: {KILL_RUNS} runs in {:?}: {placed} killed while the \
         child slept in its sandbox, {before} before it was placed",
        start.elapsed()
    );
    assert!(
        placed >= KILL_RUNS / 2,
        "too few kills after placement: {placed}"
    );
    d.assert_nothing_left(Duration::from_secs(2));
    assert!(d.running(), "the daemon died: {}", d.log());
}

/// The figure: 1,000 clients SIGKILLed at random moments (0-50 ms
/// after they start: before the sandbox exists, between creation and
/// placement, while the child runs), back to back; afterwards the daemon
/// has no sandbox and no policy entry in its maps, and no cgroup, record or
/// process of the runs is left. (~30 s: the per-run checks are in
/// `killed_client_leaves_nothing`.)
#[test]
fn a_thousand_random_client_kills_leak_nothing() {
    let d = Daemon::start_with(&["--max-requests-per-sec", "100000"]);
    let agent = sys::agent_bin();
    let user = own_user(62);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("a_thousand_random_client_kills_leak_nothing: seed {seed:#x}");
    let mut rng = Rng(seed);
    let start = Instant::now();
    for _ in 0..1000 {
        let mut client = exec_command(&agent, None, &opts(&d, user))
            .args(["sleep", "30"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the client");
        std::thread::sleep(Duration::from_millis(rng.next() % 51));
        client.kill().expect("SIGKILL the client");
        client.wait().expect("reap the client");
    }
    let clean = sys::wait_until(Duration::from_secs(3), || {
        d.sandbox_cgroups().is_empty()
            && d.records().is_empty()
            && d.status() == (0, 0)
            && sys::pids_of_uid(user.uid).is_empty()
    });
    let left = sys::pids_of_uid(user.uid);
    for &p in &left {
        sys::kill_pid(p);
    }
    assert!(
        clean,
        "after 1,000 random client kills (seed {seed:#x}, {:?}): cgroups {:?}, records {:?}, \
         (sandboxes, policy entries) {:?}, processes of uid {} {:?}\ndaemon: {}",
        start.elapsed(),
        d.sandbox_cgroups(),
        d.records(),
        d.status(),
        user.uid,
        left,
        d.log()
    );
    assert!(d.running(), "the daemon died: {}", d.log());
}

/// Existing system accounts (nobody, daemon, bin, sys): no account is
/// created or removed.
const USERS: [(&str, u32); 4] = [("nobody", 65534), ("daemon", 1), ("bin", 2), ("sys", 3)];
const PER_USER: usize = 50;

/// 50 concurrent `exec -- sleep 2` per user for 4 users: all 200 get
/// `bpf (daemon)`, run in their own cgroup of the daemon and exit 0;
/// afterwards no cgroup and no record is left.
#[test]
fn two_hundred_sandboxes_from_four_users() {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    for (name, uid) in USERS {
        assert!(
            passwd
                .lines()
                .any(|l| l.starts_with(&format!("{name}:x:{uid}:"))),
            "user {name} (uid {uid}) is missing from /etc/passwd"
        );
    }
    let d = Daemon::start();
    let agent = sys::agent_bin();
    let mut children: Vec<(u32, Child)> = Vec::new();
    let started = Instant::now();
    for _ in 0..PER_USER {
        for (_, uid) in USERS {
            let user = RunAs { uid, gid: uid };
            let mut cmd = exec_command(&agent, None, &opts(&d, user));
            cmd.args(["sh", "-c", "grep ^0:: /proc/self/cgroup; exec sleep 2"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            children.push((uid, cmd.spawn().expect("spawn a client")));
        }
    }
    // A watchdog (kills what still runs after 60 s) and a sampler of how
    // many sandboxes exist at once.
    let pids: Vec<i32> = children.iter().map(|(_, c)| c.id() as i32).collect();
    let done = Arc::new(AtomicBool::new(false));
    let max = Arc::new(Mutex::new(0usize));
    let watch = {
        let (done, max, parent) = (done.clone(), max.clone(), d.parent_cgroup.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            while !done.load(Ordering::Relaxed) {
                let n = sys::subdirs(&parent).len();
                let mut m = max.lock().unwrap();
                *m = (*m).max(n);
                drop(m);
                if t.elapsed() > Duration::from_secs(60) {
                    for &p in &pids {
                        sys::kill_pid(p);
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let outputs: Vec<_> = children
        .into_iter()
        .map(|(uid, c)| (uid, c.wait_with_output().expect("wait for a client")))
        .collect();
    done.store(true, Ordering::Relaxed);
    watch.join().unwrap();
    let elapsed = started.elapsed();
    let prefix = format!("0::/{}/", d.name);
    let mut cgroups = HashSet::new();
    let mut failures = Vec::new();
    for (uid, o) in &outputs {
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        let cg = stdout.lines().find(|l| l.starts_with(&prefix));
        if !o.status.success() || !stderr.lines().any(|l| l == ENFORCER_LINE) || cg.is_none() {
            failures.push(format!(
                "uid {uid}: {} stdout {stdout:?} stderr {stderr:?}",
                o.status
            ));
        }
        if let Some(cg) = cg {
            cgroups.insert(cg.to_string());
        }
    }
    eprintln!(
        "two_hundred_sandboxes_from_four_users: {} runs in {elapsed:?}, up to {} sandboxes at \
         once, {} failed",
        outputs.len(),
        max.lock().unwrap(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} runs failed:\n{}\ndaemon: {}",
        failures.len(),
        outputs.len(),
        failures.join("\n"),
        d.log()
    );
    assert_eq!(
        cgroups.len(),
        USERS.len() * PER_USER,
        "sandbox cgroups not distinct"
    );
    d.assert_nothing_left(Duration::from_secs(5));
    assert!(d.running(), "the daemon died: {}", d.log());
}

/// The per-uid rate counts sandboxes, not messages: with a rate of 5 per
/// second (bursts of 10), 10 back-to-back `exec`s all start, although each
/// makes four or five requests (create, place, resume, end); the eleventh
/// and later ones in the same burst are refused with the daemon's reason,
/// and nothing runs for them.
#[test]
fn the_request_rate_counts_sandboxes_not_messages() {
    let d = Daemon::start_with(&["--max-requests-per-sec", "5"]);
    let agent = sys::agent_bin();
    let user = own_user(63);
    let run = || {
        let mut c = exec_command(&agent, None, &opts(&d, user));
        c.args(["/bin/true"]);
        sys::run_timeout(&mut c, sys::CMD_TIMEOUT)
    };
    for i in 0..10 {
        let out = run();
        assert_eq!(out.code(), 0, "exec {i} of the burst: {}", out.describe());
    }
    // Past the burst: refused, saying why (not started unconfined).
    let refused = (0..10).map(|_| run()).find(|o| o.code() != 0);
    let out = refused.expect("the burst allowance ran out");
    assert_eq!(out.code(), 125, "{}", out.describe());
    assert!(
        out.stderr.contains("too many requests"),
        "{}",
        out.describe()
    );
}

/// A sandbox the daemon refuses (the uid's sandbox limit, 1, held by
/// another run) is reported as such, with the daemon's reason, exit 125,
/// and nothing of the command runs: `exec` sends create and place one
/// behind the other and its child waits for both answers. The holder's
/// run is unaffected.
#[test]
fn a_refused_create_runs_nothing_and_says_why() {
    let d = Daemon::start_with(&["--max-sandboxes-per-uid", "1"]);
    let agent = sys::agent_bin();
    let user = own_user(62);
    let dir = std::env::temp_dir().join(format!("nono-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
    let mut holder = exec_command(&agent, None, &opts(&d, user));
    holder
        .args(["sleep", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut holder = holder.spawn().expect("spawn the holder");
    let started = sys::wait_until(Duration::from_secs(10), || {
        !placed_sleepers(&d, user.uid).is_empty()
    });
    let marker = dir.join("ran");
    let out = sys::run_timeout(
        exec_command(&agent, None, &opts(&d, user)).args([
            "sh".to_string(),
            "-c".to_string(),
            format!("echo ran > {}", marker.display()),
        ]),
        sys::CMD_TIMEOUT,
    );
    let holder_alive = holder.try_wait().expect("holder status").is_none();
    let _ = holder.kill();
    let _ = holder.wait();
    let ran = marker.exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        started,
        "the holder never slept in its sandbox\ndaemon: {}",
        d.log()
    );
    assert_eq!(out.code(), 125, "{}", out.describe());
    assert!(
        out.stderr.contains("did not create the sandbox") && out.stderr.contains("sandboxes"),
        "the refusal and the daemon's reason: {}",
        out.describe()
    );
    assert!(!ran, "the refused run's command ran: {}", out.describe());
    assert!(holder_alive, "the holder's run ended with the refusal");
    d.assert_nothing_left(Duration::from_secs(2));
}
